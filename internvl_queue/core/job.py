"""The job record: a frozen dataclass that validates itself and maps to a Redis hash."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from .priority import Priority
from .redis_client import HashFields
from .status import JobStatus, check_transition

__all__ = ["Job", "JobParams", "iso8601", "new_job_id"]


def new_job_id() -> str:
    return uuid.uuid4().hex


def iso8601(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    stamp = datetime.fromtimestamp(epoch, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class JobParams:
    max_new_tokens: int
    max_tiles: int
    timeout_s: int = 600  # deadline, counted from submission

    def to_dict(self) -> dict[str, int]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "max_tiles": self.max_tiles,
            "timeout_s": self.timeout_s,
        }


@dataclass(frozen=True)
class Job:
    id: str
    status: JobStatus
    question: str
    params: JobParams
    image_count: int
    created_at: float
    metadata: dict[str, Any] | None = None
    # The API key that submitted the job ("" when the API runs open); only it sees the job.
    owner: str = ""
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = ()
    # When the record (and its images) will be deleted: retention from submission, then again
    # from the moment it finished.
    expires_at: float = 0.0
    # Set when a cancel reaches a running job; the worker stops it and stores ``canceled``.
    cancel_requested_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    # Deliveries so far, and the token of the current one: only the delivery holding the token
    # may store the job's outcome, so a duplicate delivery can never write a second one.
    attempts: int = 0
    attempt_token: str = ""
    # The worker running the current delivery, and until when its lease holds (renewed by that
    # worker's heartbeat); a running job whose lease lapsed goes back to the queue.
    worker: str = ""
    lease_until: float = 0.0
    # When the job's latest broker message was sent (or will be: see JobStore.needs_dispatch).
    dispatched_at: float = 0.0
    # The broker queue its messages go to (INTERNVL_QUEUE of the API that took it): a reaper
    # re-sends a job there, whichever queue the reaper's own worker consumes.
    queue: str = ""
    # Its lane in that queue (core/priority.py): which broker list its messages go to, and how
    # its worker's engine orders it among the requests it holds.
    priority: Priority = Priority.NORMAL
    # What the job's answer is cached under (core/result_cache.py); "" when it is not cached.
    cache_digest: str = ""
    # The batch the job was submitted in, and the caller's name for its line ("" for neither).
    batch_id: str = ""
    custom_id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a job needs an id")
        if self.image_count < 1:
            raise ValueError("a job needs at least one image")
        if (self.status is JobStatus.SUCCEEDED) != (self.result is not None):
            raise ValueError("a job has a result exactly when it succeeded")

    @classmethod
    def new(
        cls,
        question: str,
        params: JobParams,
        image_count: int,
        metadata: dict[str, Any] | None = None,
        *,
        owner: str = "",
        webhook_url: str | None = None,
        webhook_events: tuple[str, ...] = (),
        queue: str = "",
        priority: Priority = Priority.NORMAL,
        batch_id: str = "",
        custom_id: str = "",
    ) -> Job:
        return cls(
            id=new_job_id(),
            status=JobStatus.QUEUED,
            question=question,
            params=params,
            image_count=image_count,
            metadata=metadata,
            owner=owner,
            webhook_url=webhook_url,
            webhook_events=webhook_events if webhook_url else (),
            created_at=time.time(),
            queue=queue,
            priority=priority,
            batch_id=batch_id,
            custom_id=custom_id,
        )

    def moved_to(self, status: JobStatus, **changes: Any) -> Job:
        """This job in a new state; raises ``IllegalTransition`` for a move the machine forbids."""
        check_transition(self.status, status)
        return replace(self, status=status, **changes)

    # -- Redis hash mapping -------------------------------------------------------------------
    def to_hash(self) -> HashFields:
        return {
            "id": self.id,
            "status": self.status.value,
            "question": self.question,
            "params": json.dumps(self.params.to_dict()),
            "image_count": str(self.image_count),
            "created_at": repr(self.created_at),
            "metadata": json.dumps(self.metadata),
            "owner": self.owner,
            "webhook_url": self.webhook_url or "",
            "webhook_events": ",".join(self.webhook_events),
            "expires_at": repr(self.expires_at),
            "cancel_requested_at": json.dumps(self.cancel_requested_at),
            "started_at": json.dumps(self.started_at),
            "finished_at": json.dumps(self.finished_at),
            "result": json.dumps(self.result),
            "error": json.dumps(self.error),
            "attempts": str(self.attempts),
            "attempt_token": self.attempt_token,
            "worker": self.worker,
            "lease_until": repr(self.lease_until),
            "dispatched_at": repr(self.dispatched_at),
            "queue": self.queue,
            "priority": self.priority.value,
            "cache_digest": self.cache_digest,
            "batch_id": self.batch_id,
            "custom_id": self.custom_id,
        }

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> Job:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=h["id"],
            status=JobStatus(h["status"]),
            question=h["question"],
            params=JobParams(**json.loads(h["params"])),
            image_count=int(h["image_count"]),
            created_at=float(h["created_at"]),
            metadata=json.loads(h["metadata"]),
            owner=h.get("owner", ""),
            webhook_url=h.get("webhook_url") or None,
            webhook_events=tuple(e for e in h.get("webhook_events", "").split(",") if e),
            expires_at=float(h.get("expires_at", "0")),
            cancel_requested_at=json.loads(h.get("cancel_requested_at", "null")),
            started_at=json.loads(h["started_at"]),
            finished_at=json.loads(h["finished_at"]),
            result=json.loads(h["result"]),
            error=json.loads(h["error"]),
            attempts=int(h["attempts"]),
            attempt_token=h["attempt_token"],
            worker=h.get("worker", ""),
            lease_until=float(h.get("lease_until", "0")),
            dispatched_at=float(h.get("dispatched_at", "0")),
            queue=h.get("queue", ""),
            priority=Priority(h.get("priority", Priority.NORMAL.value)),
            cache_digest=h.get("cache_digest", ""),
            batch_id=h.get("batch_id", ""),
            custom_id=h.get("custom_id", ""),
        )

    # -- public view ----------------------------------------------------------------------------
    def to_public(self, *, queue_position: int | None = None) -> dict[str, Any]:
        """The job object of the HTTP API and of webhooks (internal bookkeeping left out)."""
        return {
            "id": self.id,
            "status": self.status.value,
            "created_at": iso8601(self.created_at),
            "started_at": iso8601(self.started_at),
            "finished_at": iso8601(self.finished_at),
            "expires_at": iso8601(self.expires_at),
            "queue_position": queue_position if self.status is JobStatus.QUEUED else None,
            "priority": self.priority.value,
            "cancel_requested_at": iso8601(self.cancel_requested_at),
            "question": self.question,
            "params": self.params.to_dict(),
            "metadata": self.metadata,
            "webhook": (
                {"url": self.webhook_url, "events": list(self.webhook_events)}
                if self.webhook_url
                else None
            ),
            "result": self.result,
            "error": self.error,
            "batch": (
                {"id": self.batch_id, "custom_id": self.custom_id} if self.batch_id else None
            ),
        }
