"""The service's data directory on this host: ``up``'s Redis files, its service file, the
development webhook secret and the demo model.

``INTERNVL_DATA_DIR`` if set, else ``$XDG_STATE_HOME/internvl-queue``
(``~/.local/state/internvl-queue``): one per user, the same whatever directory a command runs in,
and always absolute, because child processes run elsewhere (``redis-server`` changes into its own
directory before it opens its log file).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["default_data_dir"]


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    configured = environ.get("INTERNVL_DATA_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return (Path(state).expanduser() / "internvl-queue").resolve()
