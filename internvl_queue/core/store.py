"""The Redis job store: one hash per job, images in a list beside it, one transaction per change.

Every state change reads the record under ``WATCH``, checks the move with the pure state machine
and writes it in ``MULTI``/``EXEC``; a concurrent writer makes the transaction retry, so two
deliveries of one job can never both store an outcome.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import redis

from .job import Job
from .keys import images_key, job_key
from .status import JobStatus

__all__ = ["Claim", "ClaimOutcome", "JobStore"]

T = TypeVar("T")


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"  # the job is now running under a fresh attempt token
    MISSING = "missing"  # unknown or expired: nothing to do
    ALREADY_TERMINAL = "already_terminal"  # a redelivered message for a finished job
    GAVE_UP = "gave_up"  # delivered too often; the job has been failed


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None


class JobStore:
    def __init__(self, client: redis.Redis, *, retention_s: int) -> None:
        self.redis = client
        self.retention_s = retention_s

    def create(self, job: Job, images: list[bytes]) -> None:
        """Store a new job and its images atomically, both expiring after the retention time."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(job_key(job.id), mapping=job.to_hash())
        pipe.rpush(images_key(job.id), *images)
        pipe.expire(job_key(job.id), self.retention_s)
        pipe.expire(images_key(job.id), self.retention_s)
        pipe.execute()

    def discard(self, job_id: str) -> None:
        """Remove a job that was never dispatched (the broker refused it)."""
        self.redis.delete(job_key(job_id), images_key(job_id))

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
            if job.attempts >= max_attempts:
                failed = job.moved_to(
                    JobStatus.FAILED,
                    finished_at=now,
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
        """Store the outcome of the delivery that claimed ``job``; None if it no longer owns it."""

        def decide(current: Job | None) -> tuple[Job | None, Job | None]:
            if (
                current is None
                or current.status is not JobStatus.RUNNING
                or current.attempt_token != job.attempt_token
            ):
                return None, None
            done = current.moved_to(status, finished_at=time.time(), result=result, error=error)
            return done, done

        return self._update(job.id, decide)

    def _update(self, job_id: str, decide: Callable[[Job | None], tuple[T, Job | None]]) -> T:
        """Read the job under WATCH, let ``decide`` return (answer, new record or None), write it.

        A terminal record loses its images and is kept for the retention time from now.
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
            pipe.multi()
            pipe.hset(key, mapping=new.to_hash())
            if new.status.is_terminal:
                pipe.delete(images_key(job_id))
                pipe.expire(key, self.retention_s)

        self.redis.transaction(transaction, key)
        return answer[0]
