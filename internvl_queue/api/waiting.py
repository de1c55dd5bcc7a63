"""How long a caller will wait: ``?wait=N`` on reads, ``Prefer: wait=N`` on submits.

``Prefer: respond-async`` (RFC 7240) asks for the asynchronous reply, the 202, at once: it wins
over a ``wait`` in the same header.
"""

from __future__ import annotations

import re

from ..core.errors import ValidationFailed

__all__ = ["MAX_WAIT_S", "prefer_wait", "prefers_respond_async", "query_wait"]

MAX_WAIT_S = 60.0

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)
# A preference's name is what comes before its "=" or ";" parameters (RFC 7240 section 2).
_PREFERENCE_NAME = re.compile(r"^\s*([^=;\s]+)")


def query_wait(raw: str | None) -> float:
    """Seconds from ``?wait=``: 0 when absent; 0..60, else a 422."""
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT_S:
        raise ValidationFailed(
            f"wait must be a number of seconds from 0 to {MAX_WAIT_S:.0f}", code="invalid_parameter"
        )
    return value


def prefer_wait(header: str | None) -> float:
    """Seconds from ``Prefer: wait=N`` (RFC 7240), capped at 60; 0 when absent.

    A preference is a hint, so an unreadable or too large one is capped or ignored, not refused.
    """
    match = _PREFER_WAIT.search(header or "")
    return min(float(match.group(1)), MAX_WAIT_S) if match else 0.0


def prefers_respond_async(header: str | None) -> bool:
    """Whether ``Prefer`` holds ``respond-async`` (names are case-insensitive)."""
    for preference in (header or "").split(","):
        match = _PREFERENCE_NAME.match(preference)
        if match and match.group(1).lower() == "respond-async":
            return True
    return False
