"""One webhook attempt of a job, as ``GET /v1/jobs/<id>/deliveries`` lists it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Delivery"]


@dataclass(frozen=True)
class Delivery:
    """``outcome``: ``delivered``, ``retrying``, ``gave_up``, ``gone`` (410) or ``refused``;
    ``status_code`` is None when no reply came (``error`` says why)."""

    event_id: str
    type: str
    attempt: int
    at: str
    url: str
    outcome: str
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None
    next_attempt_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Delivery:
        return cls(
            event_id=data["event_id"],
            type=data["type"],
            attempt=data["attempt"],
            at=data["at"],
            url=data["url"],
            outcome=data["outcome"],
            status_code=data.get("status_code"),
            error=data.get("error"),
            duration_ms=data.get("duration_ms"),
            next_attempt_at=data.get("next_attempt_at"),
            raw=data,
        )
