"""The batch object of the API (``POST /v1/batches``), typed: ``Batch`` and its ``BatchCounts``.

Built from the API's JSON with ``Batch.from_api``; the object exactly as received is kept in
``raw`` (fields the API adds later, ``webhook``, ``results_url``...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import ClientError

__all__ = ["TERMINAL_BATCH_STATUSES", "Batch", "BatchCounts"]

TERMINAL_BATCH_STATUSES = frozenset({"completed", "canceled", "failed"})


@dataclass(frozen=True)
class BatchCounts:
    """``total`` lines = ``invalid`` + ``jobs``; ``jobs`` = ``pending`` + ``succeeded`` +
    ``failed`` + ``canceled``."""

    total: int
    invalid: int
    jobs: int
    pending: int
    succeeded: int
    failed: int
    canceled: int


@dataclass(frozen=True)
class Batch:
    id: str
    status: str  # queued, running, completed, canceled or failed
    counts: BatchCounts
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    # The invalid lines (the first 1 000): {"line", "custom_id", "code", "message"}.
    errors: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_BATCH_STATUSES

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Batch:
        try:
            counts = data["counts"]
            return cls(
                id=data["id"],
                status=data["status"],
                counts=BatchCounts(**{name: int(counts.get(name, 0)) for name in _COUNTS}),
                created_at=datetime.fromisoformat(data["created_at"]),
                started_at=_time(data.get("started_at")),
                finished_at=_time(data.get("finished_at")),
                expires_at=_time(data.get("expires_at")),
                cancel_requested_at=_time(data.get("cancel_requested_at")),
                metadata=data.get("metadata"),
                errors=list(data.get("errors") or []),
                raw=data,
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ClientError(
                f"the API sent a batch object this client cannot read ({exc!r}); is the URL "
                "that of an internvl-queue API, and the API as new as the client?"
            ) from None


_COUNTS = ("total", "invalid", "jobs", "pending", "succeeded", "failed", "canceled")


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
