"""Free disk space where the model is downloaded to and where the service keeps its data."""

from __future__ import annotations

import shutil
from pathlib import Path

from .report import Check, Level, human_bytes

__all__ = ["check_disk"]

_GiB = 1024**3


def check_disk(subject: str, path: Path, *, need_bytes: int = 0, warn_below: int = _GiB) -> Check:
    """``need_bytes``: what must still be written there (a model download), 0 if nothing known."""
    existing = _nearest_existing(path)
    try:
        usage = shutil.disk_usage(existing)
    except OSError as exc:
        return Check(subject, Level.WARN, f"{path}: cannot read its free space ({exc})")
    free = f"{path}: {human_bytes(usage.free)} free of {human_bytes(usage.total)}"
    if need_bytes and usage.free < need_bytes * 1.05:
        return Check(
            subject,
            Level.FAIL,
            f"{free}, but the model needs {human_bytes(need_bytes)}: free some space or point "
            "HF_HOME at a larger disk",
        )
    if usage.free < warn_below:
        return Check(subject, Level.WARN, f"{free}: little room left")
    return Check(subject, Level.OK, free)


def _nearest_existing(path: Path) -> Path:
    """The path, or the closest folder above it that exists (it is created on first use)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")
