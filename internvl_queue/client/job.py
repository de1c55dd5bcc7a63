"""The job object of the API, typed: ``Job``, its ``JobResult`` (with ``Usage``) and ``JobError``.

Built from the API's JSON with ``Job.from_api``; fields the API adds later are kept in ``raw``
(the object exactly as received), so an older client still reads a newer API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..core.status import JobStatus
from .errors import ClientError

__all__ = ["Job", "JobError", "JobPage", "JobResult", "JobStatus", "Usage"]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    image_tiles: int


@dataclass(frozen=True)
class JobResult:
    """A succeeded job's outcome; ``timings_ms`` has ``queued``, ``preprocess``, ``inference``
    and ``total`` (milliseconds)."""

    answer: str
    model: str
    usage: Usage
    timings_ms: dict[str, float]
    batch_size: int | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> JobResult:
        usage = data.get("usage") or {}
        return cls(
            answer=data["answer"],
            model=data.get("model", ""),
            usage=Usage(
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
                image_tiles=usage.get("image_tiles", 0),
            ),
            timings_ms=dict(data.get("timings_ms") or {}),
            batch_size=data.get("batch_size"),
        )


@dataclass(frozen=True)
class JobError:
    """Why a job ended ``failed`` or ``canceled``: a stable ``code`` and a sentence."""

    code: str
    message: str


@dataclass(frozen=True)
class Job:
    id: str
    status: JobStatus
    question: str
    params: dict[str, int]  # max_new_tokens, max_tiles, timeout_s, as the API applied them
    created_at: datetime
    expires_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    queue_position: int | None = None  # while queued: 1 for the next to start
    metadata: dict[str, Any] | None = None
    webhook: dict[str, Any] | None = None  # {"url", "events"}, or None
    result: JobResult | None = None  # set exactly when the job succeeded
    error: JobError | None = None  # set when it failed or was canceled
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_finished(self) -> bool:
        """Whether the job reached a terminal state (succeeded, failed or canceled)."""
        return self.status.is_terminal

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Job:
        """The job from the API's JSON object; a ``ClientError`` if it is not one."""
        try:
            return cls._parse(data)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ClientError(
                f"the API sent a job object this client cannot read ({exc!r}); is the URL that "
                "of an internvl-queue API, and the client as new as the API?"
            ) from None

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> Job:
        result, error = data.get("result"), data.get("error")
        return cls(
            id=data["id"],
            status=JobStatus(data["status"]),
            question=data["question"],
            params=dict(data["params"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            expires_at=_time(data.get("expires_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            cancel_requested_at=_time(data.get("cancel_requested_at")),
            queue_position=data.get("queue_position"),
            metadata=data.get("metadata"),
            webhook=data.get("webhook"),
            result=JobResult.from_api(result) if result is not None else None,
            error=JobError(error["code"], error["message"]) if error is not None else None,
            raw=data,
        )


@dataclass(frozen=True)
class JobPage:
    """A page of ``GET /v1/jobs``: jobs newest first, and the cursor of the next page (None:
    the last one). With a status filter a page may hold fewer jobs than asked, or none."""

    jobs: list[Job]
    next_cursor: str | None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> JobPage:
        try:
            items, cursor = data["data"], data["next_cursor"]
        except (KeyError, TypeError):
            raise ClientError(
                "the API sent a page of jobs this client cannot read; is the URL that of an "
                "internvl-queue API, and the API as new as the client?"
            ) from None
        return cls([Job.from_api(item) for item in items], cursor)


def _time(value: str | None) -> datetime | None:
    # The API writes ISO 8601 in UTC with a "Z" (Python 3.11's fromisoformat reads it).
    return None if value is None else datetime.fromisoformat(value)
