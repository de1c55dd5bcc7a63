"""Where ``internvl-queue up`` keeps its files, and how the other commands find the service it runs.

``up`` starts its own Redis on a free port; the port changes at every start. So that ``keys``,
``submit`` and ``doctor`` talk to that Redis and that API without being told, ``up`` writes what it
runs to ``service.json`` in its data directory while it runs, and removes it when it stops. The
other commands read it when ``REDIS_URL`` (or ``--api``) is not given.

The data directory is ``core.data_dir.default_data_dir()``: one per user, the same from whatever
directory a command runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.data_dir import default_data_dir
from ..core.redis_client import RedisTarget

__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_REDIS_URL",
    "RunningService",
    "api_url",
    "default_data_dir",
    "redis_target",
    "redis_url",
    "running_service",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_API_URL = "http://127.0.0.1:8000"
_SERVICE_FILE = "service.json"


@dataclass(frozen=True)
class RunningService:
    """What one running ``up`` serves."""

    pid: int
    redis_url: str
    api_url: str
    # The model its worker serves (``INTERNVL_MODEL`` as ``up`` resolved it; "demo" with
    # ``--demo``): what ``doctor`` checks when it is not told a model. "" from an older ``up``.
    model: str = ""

    def write(self, data_dir: Path) -> None:
        path = data_dir / _SERVICE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self)))
        temporary.replace(path)  # readers never see half a file

    @staticmethod
    def remove(data_dir: Path) -> None:
        (data_dir / _SERVICE_FILE).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def running_service(data_dir: Path | None = None) -> RunningService | None:
    """The service an ``up`` runs from ``data_dir`` now, or None (none, or its ``up`` died)."""
    path = (data_dir or default_data_dir()) / _SERVICE_FILE
    try:
        raw = json.loads(path.read_text())
        found = RunningService(
            int(raw["pid"]), str(raw["redis_url"]), str(raw["api_url"]), str(raw.get("model", ""))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if _alive(found.pid) else None


def redis_url() -> str:
    """``REDIS_URL`` if set; else the Redis of the running ``up``; else the default."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        return configured
    service = running_service()
    return service.redis_url if service is not None else DEFAULT_REDIS_URL


def redis_target() -> RedisTarget:
    """``redis_url()``, or the primary that ``REDIS_SENTINELS`` name (ValueError with one
    sentence when those variables are wrong)."""
    return RedisTarget.from_env(os.environ, redis_url())


def api_url() -> str:
    """``INTERNVL_API`` if set; else the API of the running ``up``; else the default."""
    configured = os.environ.get("INTERNVL_API")
    if configured:
        return configured.rstrip("/")
    service = running_service()
    return service.api_url if service is not None else DEFAULT_API_URL
