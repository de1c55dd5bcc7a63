"""What ``GET /v1/jobs`` asks for: its query, validated, and its opaque cursor (pure, no I/O).

A listing walks the caller's jobs newest first. Its place in that walk is a ``Position``: the
``created_at`` and id of the last job a page held. Ordering by (created_at, id) is total, so a
page that starts strictly after the position neither repeats a job nor skips one that existed
when the walk began, however many jobs are submitted meanwhile (they are newer: ahead of it).
The cursor is that position, base64url-encoded; callers must treat it as opaque.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from .errors import BadRequest, ValidationFailed
from .status import JobStatus

__all__ = [
    "DEFAULT_LIMIT",
    "LATEST_TIMESTAMP",
    "MAX_LIMIT",
    "ListQuery",
    "Position",
    "parse_list_query",
]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# 9999-12-31T23:59:59Z: the largest created_after accepted as unix seconds.
LATEST_TIMESTAMP = 253402300799

_CURSOR_VERSION = "1"
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_UNIX_SECONDS = re.compile(r"^[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?$")


@dataclass(frozen=True, order=True)
class Position:
    """Where a walk stands: just after the job created at ``created_at`` with id ``job_id``."""

    created_at: float
    job_id: str

    def to_cursor(self) -> str:
        text = f"{_CURSOR_VERSION}:{self.created_at!r}:{self.job_id}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def from_cursor(cls, cursor: str) -> Position:
        """The position a cursor of ours names; a 400 ``invalid_cursor`` for anything else."""
        try:
            text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
            version, created_at, job_id = text.split(":")
            position = cls(float(created_at), job_id)
        except (binascii.Error, UnicodeError, ValueError):
            position = None
        if (
            position is None
            or version != _CURSOR_VERSION
            or not math.isfinite(position.created_at)
            or not _JOB_ID.match(position.job_id)
        ):
            raise BadRequest(
                "cursor is not one this API gave out: pass next_cursor from the previous page "
                "unchanged, or leave cursor out to start from the newest job",
                code="invalid_cursor",
            )
        return position


@dataclass(frozen=True)
class ListQuery:
    limit: int = DEFAULT_LIMIT
    # Only jobs in these states; None: every state.
    statuses: frozenset[JobStatus] | None = None
    # Only jobs created strictly after this moment (unix seconds); None: all.
    created_after: float | None = None
    # Continue after this position; None: start from the newest job.
    after: Position | None = None


def parse_list_query(
    *,
    limit: str | None = None,
    statuses: Iterable[str] = (),
    created_after: str | None = None,
    cursor: str | None = None,
) -> ListQuery:
    """The query of a listing from its raw parameters, or a 400/422 saying what is wrong.

    ``statuses``: each value of the repeated ``status`` parameter, each one state or several
    separated by commas."""
    return ListQuery(
        limit=_limit(limit),
        statuses=_statuses(list(statuses)),
        created_after=None if created_after is None else _moment(created_after),
        after=None if cursor is None else Position.from_cursor(cursor),
    )


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    value = int(raw) if raw.isascii() and raw.isdigit() else 0
    if not 1 <= value <= MAX_LIMIT:
        raise ValidationFailed(
            f"limit must be a whole number from 1 to {MAX_LIMIT}, not {raw[:40]!r}",
            code="invalid_parameter",
        )
    return value


def _statuses(values: list[str]) -> frozenset[JobStatus] | None:
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",")]
    known = {status.value for status in JobStatus}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValidationFailed(
            f"status {unknown[0][:40]!r} is not a job state; use one or more of "
            f"{', '.join(sorted(known))} (repeated, or comma-separated)",
            code="invalid_parameter",
        )
    return frozenset(JobStatus(name) for name in names)


def _moment(raw: str) -> float:
    """Unix seconds from ``raw``: a number of seconds, or an ISO 8601 date and time with its
    UTC offset (``2026-11-24T14:00:00Z``, as the API writes them)."""
    if _UNIX_SECONDS.match(raw):
        seconds = float(raw)
        if 0 <= seconds <= LATEST_TIMESTAMP:
            return seconds
    else:
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment.timestamp()
    raise ValidationFailed(
        f"created_after must be unix seconds (0 to {LATEST_TIMESTAMP}) or an ISO 8601 date and "
        f"time with its offset, such as 2026-11-24T14:00:00Z; not {raw[:40]!r}",
        code="invalid_parameter",
    )
