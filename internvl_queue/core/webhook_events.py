"""Webhook events: which job transitions produce which event, and the event record itself.

An event is built when the job's new state is stored and written to the outbox in that same
Redis transaction (``stage``), so a process that dies right after cannot lose it. Its body is
fixed then: every attempt sends the same bytes under the same ``webhook-id``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from .job import Job, iso8601
from .keys import event_key, outbox_key
from .redis_client import HashFields
from .status import JobStatus

__all__ = [
    "DEFAULT_EVENTS",
    "EVENT_TYPES",
    "WebhookEvent",
    "events_for",
    "stage",
]

EVENT_TYPES = ("job.started", "job.succeeded", "job.failed", "job.canceled")
DEFAULT_EVENTS = ("job.succeeded", "job.failed", "job.canceled")


def events_for(old: Job | None, new: Job) -> list[str]:
    """Event types the move old -> new produces for this job's subscription (pure)."""
    if not new.webhook_url or old is None or old.status is new.status:
        return []  # a redelivery (running -> running) starts nothing new
    if new.status is JobStatus.RUNNING:
        if new.attempts > 1:
            return []  # started again after its worker died: the caller heard it start once
        kind = "job.started"
    elif new.status is JobStatus.QUEUED:
        return []  # back in the queue after its worker died: it will start (again) later
    elif new.status.is_terminal:
        kind = f"job.{new.status.value}"
    else:
        return []
    return [kind] if kind in new.webhook_events else []


@dataclass(frozen=True)
class WebhookEvent:
    id: str  # the webhook-id: one per event, the same on every attempt
    job_id: str
    type: str
    url: str
    body: str  # the exact JSON sent on every attempt
    created_at: float
    attempts: int = 0
    # Set by the delivery side when it leases the event for one attempt.
    lease_token: str = ""
    # Set when the event stops being retried: "delivered", "gave_up", "gone" (410), "refused".
    outcome: str = ""

    @classmethod
    def for_job(cls, job: Job, kind: str, now: float | None = None) -> WebhookEvent:
        assert job.webhook_url, "only a job with a webhook_url has events"
        now = time.time() if now is None else now
        payload: dict[str, Any] = {
            "type": kind,
            "timestamp": iso8601(now),
            "data": job.to_public(),
        }
        return cls(
            id=f"msg_{uuid.uuid4().hex}",
            job_id=job.id,
            type=kind,
            url=job.webhook_url,
            body=json.dumps(payload, separators=(",", ":")),
            created_at=now,
        )

    def to_hash(self) -> HashFields:
        return {
            "id": self.id,
            "job_id": self.job_id,
            "type": self.type,
            "url": self.url,
            "body": self.body,
            "created_at": repr(self.created_at),
            "attempts": str(self.attempts),
            "lease_token": self.lease_token,
            "outcome": self.outcome,
        }

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> WebhookEvent:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=h["id"],
            job_id=h["job_id"],
            type=h["type"],
            url=h["url"],
            body=h["body"],
            created_at=float(h["created_at"]),
            attempts=int(h.get("attempts", "0")),
            lease_token=h.get("lease_token", ""),
            outcome=h.get("outcome", ""),
        )


def stage(pipe: redis.client.Pipeline, event: WebhookEvent, *, ttl_s: float) -> None:
    """Queue the commands that put ``event`` in the outbox, due now, inside the caller's MULTI."""
    pipe.hset(event_key(event.id), mapping=event.to_hash())
    pipe.expire(event_key(event.id), int(ttl_s) + 1)
    pipe.zadd(outbox_key(), {event.id: event.created_at})
