"""The Redis job store: one hash per job, images in a list beside it, one transaction per change.

Every state change reads the record under ``WATCH``, checks the move with the pure state machine
and writes it in ``MULTI``/``EXEC``; a concurrent writer makes the transaction retry, so two
deliveries of one job can never both store an outcome. The same transaction keeps the queued
index, writes the webhook events the move produces to the outbox, and announces a finished job
on its pub/sub channel (for long polls), so none of these can disagree with the record.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

import redis

from . import webhook_events
from .job import Job
from .keys import cancel_channel, done_channel, images_key, job_key, queued_key
from .settings import Settings
from .status import JobStatus

__all__ = ["CancelOutcome", "Claim", "ClaimOutcome", "JobStore", "unowned_job_exists"]

T = TypeVar("T")


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"  # the job is now running under a fresh attempt token
    MISSING = "missing"  # unknown or expired: nothing to do
    ALREADY_TERMINAL = "already_terminal"  # a redelivered message for a finished job
    GAVE_UP = "gave_up"  # delivered too often; the job has been failed
    CANCELED = "canceled"  # redelivered after its worker died, with a cancel pending: now canceled


class CancelOutcome(StrEnum):
    CANCELED = "canceled"  # it was queued: canceled at once, it will never run
    REQUESTED = "requested"  # it is running: its worker stops it and stores ``canceled``
    ALREADY_FINISHED = "already_finished"
    MISSING = "missing"


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None


class JobStore:
    def __init__(
        self, client: redis.Redis, *, retention_s: int, event_ttl_s: float | None = None
    ) -> None:
        self.redis = client
        self.retention_s = retention_s
        # Webhook events outlive their last retry; by default they live as long as a job record.
        self.event_ttl_s = retention_s if event_ttl_s is None else event_ttl_s

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> JobStore:
        return cls(
            client, retention_s=settings.job_retention_s, event_ttl_s=settings.webhook_window_s
        )

    def create(self, job: Job, images: list[bytes]) -> Job:
        """Store a new job and its images atomically, both expiring after the retention time."""
        job = replace(job, expires_at=job.created_at + self.retention_s)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(job_key(job.id), mapping=job.to_hash())
        pipe.rpush(images_key(job.id), *images)
        pipe.expire(job_key(job.id), self.retention_s)
        pipe.expire(images_key(job.id), self.retention_s)
        pipe.zadd(queued_key(), {job.id: job.created_at})
        # Entries of jobs that expired while queued (their worker never came) go too.
        pipe.zremrangebyscore(queued_key(), "-inf", job.created_at - self.retention_s)
        pipe.execute()
        return job

    def discard(self, job_id: str) -> None:
        """Remove a job that was never dispatched (the broker refused it)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(job_key(job_id), images_key(job_id))
        pipe.zrem(queued_key(), job_id)
        pipe.execute()

    def queued_count(self) -> int:
        """Jobs accepted and not yet started, across all queues and workers."""
        return int(self.redis.zcard(queued_key()))

    def queue_position(self, job_id: str) -> int | None:
        """1 for the oldest queued job; None if the job is not queued.

        Approximate: jobs are ranked by submission time, while the broker may hand out a
        redelivered or slower-to-publish message in a slightly different order.
        """
        rank = self.redis.zrank(queued_key(), job_id)
        return None if rank is None else int(rank) + 1  # type: ignore[arg-type]

    def get(self, job_id: str) -> Job | None:
        raw = self.redis.hgetall(job_key(job_id))
        return Job.from_hash(raw) if raw else None  # type: ignore[arg-type]

    def images(self, job_id: str) -> list[bytes]:
        return self.redis.lrange(images_key(job_id), 0, -1)  # type: ignore[return-value]

    def claim(self, job_id: str, *, max_attempts: int) -> Claim:
        """Start a delivery of the job: queued (or running, after a crash) becomes running."""

        def decide(job: Job | None) -> tuple[Claim, Job | None]:
            if job is None:
                return Claim(ClaimOutcome.MISSING, None), None
            if job.status.is_terminal:
                return Claim(ClaimOutcome.ALREADY_TERMINAL, job), None
            now = time.time()
            if job.cancel_requested_at is not None:
                canceled = self._ended(job, JobStatus.CANCELED, error=_CANCELED_WHILE_RUNNING)
                return Claim(ClaimOutcome.CANCELED, canceled), canceled
            if job.attempts >= max_attempts:
                failed = self._ended(
                    job,
                    JobStatus.FAILED,
                    error={
                        "code": "too_many_attempts",
                        "message": f"the job was delivered {job.attempts} times without "
                        "finishing (its worker died each time); it will not be tried again",
                    },
                )
                return Claim(ClaimOutcome.GAVE_UP, failed), failed
            running = job.moved_to(
                JobStatus.RUNNING,
                started_at=now,
                attempts=job.attempts + 1,
                attempt_token=uuid.uuid4().hex,
            )
            return Claim(ClaimOutcome.CLAIMED, running), running

        return self._update(job_id, decide)

    def finish(
        self,
        job: Job,
        status: JobStatus,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> Job | None:
        """Store the outcome of the delivery that claimed ``job``; None if it no longer owns it.

        A job that was asked to cancel while it ran ends ``canceled`` whatever its outcome: the
        caller was told it would be.
        """

        def decide(current: Job | None) -> tuple[Job | None, Job | None]:
            if (
                current is None
                or current.status is not JobStatus.RUNNING
                or current.attempt_token != job.attempt_token
            ):
                return None, None
            if current.cancel_requested_at is not None:
                done = self._ended(current, JobStatus.CANCELED, error=_CANCELED_WHILE_RUNNING)
            else:
                done = self._ended(current, status, result=result, error=error)
            return done, done

        return self._update(job.id, decide)

    def _ended(self, job: Job, status: JobStatus, **changes: Any) -> Job:
        """``job`` moved to a terminal ``status`` now; its record lives the retention time more."""
        now = time.time()
        return job.moved_to(status, finished_at=now, expires_at=now + self.retention_s, **changes)

    def cancel(self, job_id: str) -> tuple[CancelOutcome, Job | None]:
        """Cancel a job: a queued one at once; a running one by asking its worker to stop it."""

        def decide(job: Job | None) -> tuple[tuple[CancelOutcome, Job | None], Job | None]:
            if job is None:
                return (CancelOutcome.MISSING, None), None
            if job.status.is_terminal:
                return (CancelOutcome.ALREADY_FINISHED, job), None
            now = time.time()
            if job.status is JobStatus.QUEUED:
                # The request is recorded even though it took effect at once, so that every
                # canceled job (and its job.canceled event) says when the cancel was asked.
                canceled = self._ended(
                    job,
                    JobStatus.CANCELED,
                    cancel_requested_at=now,
                    error={"code": "canceled", "message": "the job was canceled before it ran"},
                )
                return (CancelOutcome.CANCELED, canceled), canceled
            if job.cancel_requested_at is not None:
                return (CancelOutcome.REQUESTED, job), None
            asked = replace(job, cancel_requested_at=now)
            return (CancelOutcome.REQUESTED, asked), asked

        return self._update(job_id, decide)

    def wait_finished(self, job_id: str, timeout_s: float) -> Job | None:
        """The job once it is terminal, or as it is after ``timeout_s``; None if unknown.

        Waits on the job's pub/sub channel, subscribed before the record is read, so a job
        finishing at any moment wakes the waiter (no polling).
        """
        if timeout_s <= 0:
            return self.get(job_id)
        deadline = time.monotonic() + timeout_s
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(done_channel(job_id))
            job = self.get(job_id)
            while job is not None and not job.status.is_terminal:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if pubsub.get_message(timeout=min(remaining, 5.0)) is not None:
                    job = self.get(job_id)
            return job
        finally:
            pubsub.close()

    def _update(self, job_id: str, decide: Callable[[Job | None], tuple[T, Job | None]]) -> T:
        """Read the job under WATCH, let ``decide`` return (answer, new record or None), write it.

        A terminal record loses its images and is kept for the retention time from now. The
        webhook events of the move are staged in the same transaction.
        """
        key = job_key(job_id)
        answer: list[T] = []

        def transaction(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hgetall(key)
            current = Job.from_hash(raw) if raw else None  # type: ignore[arg-type]
            outcome, new = decide(current)
            answer[:] = [outcome]
            if new is None:
                return
            now = time.time()
            finishing = new.status.is_terminal
            pipe.multi()
            pipe.hset(key, mapping=new.to_hash())
            if new.status is not JobStatus.QUEUED:
                pipe.zrem(queued_key(), job_id)
            for kind in webhook_events.events_for(current, new):
                event = webhook_events.WebhookEvent.for_job(new, kind, now)
                webhook_events.stage(pipe, event, ttl_s=self.event_ttl_s)
            if finishing:
                pipe.delete(images_key(job_id))
                pipe.expire(key, self.retention_s)
                pipe.publish(done_channel(job_id), new.status.value)
            elif new.cancel_requested_at is not None and (
                current is not None and current.cancel_requested_at is None
            ):
                pipe.publish(cancel_channel(), job_id)

        self.redis.transaction(transaction, key)
        return answer[0]


_CANCELED_WHILE_RUNNING = {"code": "canceled", "message": "the job was canceled while it ran"}


def unowned_job_exists(client: redis.Redis) -> bool:
    """Whether some stored job has no owner: it was submitted while the API was open.

    Such a job is readable only while the API stays open (its owner, ``""``, is nobody's key).
    Stops at the first one found; it reads every job record only when there is none, which is
    fine for the operator command that asks (``keys create``, once, for the first key).
    """
    prefix = job_key("")
    for batch in _batches(client.scan_iter(match=f"{prefix}*", count=1000), 500):
        # Only the records themselves: not the images, deliveries, ... kept beside them.
        records = [k for k in batch if ":" not in _text(k)[len(prefix) :]]
        pipe = client.pipeline(transaction=False)
        for key in records:
            pipe.hget(key, "owner")
        if any(owner in (b"", "") for owner in pipe.execute()):
            return True
    return False


def _batches(items: Iterator[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key
