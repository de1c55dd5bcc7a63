"""The Redis job store: one hash per job, images in a list beside it, one transaction per change.

Every state change reads the record under ``WATCH``, checks the move with the pure state machine
and writes it in ``MULTI``/``EXEC``; a concurrent writer makes the transaction retry, so two
deliveries of one job can never both store an outcome. The same transaction keeps the queued
index, writes the webhook events the move produces to the outbox, and announces a finished job
on its pub/sub channel (for long polls), so none of these can disagree with the record.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

import redis

from . import batches, job_metrics, webhook_events
from .durability import HeldConnection, NotDurable, ReplicaWait
from .idempotency import KeyClaim
from .job import Job, JobParams
from .job_index import stage_entry
from .keys import (
    cancel_channel,
    dispatching_key,
    done_channel,
    durability_barrier_key,
    images_key,
    job_key,
    leases_key,
    queued_batch_key,
    queued_key,
    queued_lane_key,
)
from .queue_position import queue_positions, stage_lane_cleanup
from .settings import Settings
from .status import JobStatus

__all__ = [
    "CancelOutcome",
    "Claim",
    "ClaimOutcome",
    "DispatchState",
    "JobStore",
    "unowned_job_exists",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

# WAITs for the replicas to take a job's outcome before its worker goes on regardless.
_OUTCOME_WAIT_ROUNDS = 3


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"  # the job is now running under a fresh attempt token
    MISSING = "missing"  # unknown or expired: nothing to do
    ALREADY_TERMINAL = "already_terminal"  # a redelivered message for a finished job
    GAVE_UP = "gave_up"  # delivered too often; the job has been failed
    CANCELED = "canceled"  # redelivered after its worker died, with a cancel pending: now canceled
    OWNED = "owned"  # running under another delivery whose lease holds: this message is stale


class CancelOutcome(StrEnum):
    CANCELED = "canceled"  # it was queued: canceled at once, it will never run
    REQUESTED = "requested"  # it is running: its worker stops it and stores ``canceled``
    ALREADY_FINISHED = "already_finished"
    MISSING = "missing"


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None


@dataclass(frozen=True)
class DispatchState:
    """The few fields of a job record that decide whether it needs a new broker message."""

    status: JobStatus
    dispatched_at: float  # when its latest message was sent
    queue: str  # the broker queue it was sent to ("" for the default)


class JobStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        retention_s: int,
        event_ttl_s: float | None = None,
        replica_wait: ReplicaWait | None = None,
    ) -> None:
        self.redis = client
        # New jobs and outcomes are acknowledged only once this many replicas hold them
        # (core/durability.py): a failover then cannot lose them.
        self.replica_wait = replica_wait or ReplicaWait()
        self.retention_s = retention_s
        # Webhook events outlive their last retry; by default they live as long as a job record.
        self.event_ttl_s = retention_s if event_ttl_s is None else event_ttl_s
        self._renew = client.register_script(_RENEW_LEASES)
        self._take_due = client.register_script(_TAKE_DUE)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> JobStore:
        return cls(
            client,
            retention_s=settings.job_retention_s,
            event_ttl_s=settings.webhook_window_s,
            replica_wait=ReplicaWait(
                settings.redis_min_replicas, settings.redis_replica_timeout_ms
            ),
        )

    def create(self, job: Job, images: list[bytes], *, key: KeyClaim | None = None) -> Job:
        """Store a new job and its images atomically, both expiring after the retention time.

        With ``key``, the same transaction binds that Idempotency-Key to the job, unless the key
        is already bound to a job that exists: then nothing is written and ``KeyAlreadyBound``
        says which job. (A binding whose job expired is overwritten.)

        ``NotDurable`` (its ``job`` set) when fewer replicas than ``replica_wait`` asks took it
        in time: the job is stored on the primary all the same.
        """
        job = replace(
            job, expires_at=job.created_at + self.retention_s, dispatched_at=job.created_at
        )

        def write(pipe: redis.client.Pipeline) -> None:
            if key is not None:
                key.check_free(pipe, job_key)
            pipe.multi()
            self._stage_new(pipe, job, images)
            # Entries of jobs that expired while queued (their worker never came) go too.
            pipe.zremrangebyscore(queued_key(), "-inf", job.created_at - self.retention_s)
            stage_lane_cleanup(pipe, job.queue, job.created_at - self.retention_s)
            if key is not None:
                key.stage_binding(pipe, job.id)

        self._durable_transaction(job, write, *([key.name] if key is not None else []))
        return job

    def create_finished(self, job: Job, *, key: KeyClaim | None = None) -> Job:
        """Store a new job that is already terminal (answered from the result cache): no images,
        never queued nor dispatched, with the webhook events of its whole life (``job.started``,
        then the terminal one, as its subscription asks) and its counts, in one transaction.

        ``key`` binds an Idempotency-Key to it as ``create`` does (``KeyAlreadyBound``)."""
        assert job.status.is_terminal and job.finished_at is not None
        job = replace(job, expires_at=job.finished_at + self.retention_s)
        queued = replace(
            job,
            status=JobStatus.QUEUED,
            started_at=None,
            finished_at=None,
            result=None,
            error=None,
        )
        running = replace(queued, status=JobStatus.RUNNING, started_at=job.started_at)

        def write(pipe: redis.client.Pipeline) -> None:
            if key is not None:
                key.check_free(pipe, job_key)
            pipe.multi()
            pipe.hset(job_key(job.id), mapping=job.to_hash())
            pipe.expire(job_key(job.id), self.retention_s)
            # Each event dated when its move happened: the outbox sends the earlier first.
            moves = ((queued, running, job.started_at), (running, job, job.finished_at))
            for old, new, at in moves:
                for kind in webhook_events.events_for(old, new):
                    event = webhook_events.WebhookEvent.for_job(new, kind, at)
                    webhook_events.stage(pipe, event, ttl_s=self.event_ttl_s)
            job_metrics.stage_submitted(pipe)
            job_metrics.stage_finished(pipe, job)
            stage_entry(pipe, job, self.retention_s)  # listed like any other job
            if key is not None:
                key.stage_binding(pipe, job.id)

        self._durable_transaction(job, write, *([key.name] if key is not None else []))
        return job

    def _durable_transaction(
        self, job: Job, write: Callable[[redis.client.Pipeline], None], *watches: str
    ) -> None:
        """``write`` in a transaction, then ``WAIT`` for the replicas ``replica_wait`` asks for
        on the same connection; ``NotDurable`` carrying ``job`` when they did not all answer."""
        if not self.replica_wait.enabled:
            self.redis.transaction(write, *watches)
            return
        with HeldConnection(self.redis) as held:
            held.transaction(write, *watches)
            acked = held.wait(self.replica_wait)
        if acked < self.replica_wait.replicas:
            raise NotDurable(acked, self.replica_wait, stored=job)

    def confirm_durable(self) -> None:
        """``NotDurable`` unless the replicas ``replica_wait`` asks for hold every write made so
        far, by any connection (a job read back for a retry): replication is one ordered stream,
        so a ``WAIT`` after a write of our own covers all the writes before it."""
        if not self.replica_wait.enabled:
            return
        with HeldConnection(self.redis) as held:
            pipe = held.pipeline(False)
            pipe.incr(durability_barrier_key())
            pipe.execute()
            acked = held.wait(self.replica_wait)
        if acked < self.replica_wait.replicas:
            raise NotDurable(acked, self.replica_wait)

    def create_many(
        self,
        jobs: list[tuple[Job, list[bytes]]],
        chunk: int = 500,
        *,
        fence: batches.BatchFence | None = None,
        after_chunk: Callable[[int], None] | None = None,
    ) -> list[Job]:
        """Store many new jobs (a batch's), ``chunk`` to a transaction: one round trip each,
        not one per job. Each job is written exactly as ``create`` writes it.

        With ``fence``, each chunk commits only while its batch's storer is this one
        (``StorerSuperseded`` otherwise) and counts itself in the batch (``core/batches.py``).
        ``after_chunk`` is called with each committed chunk's index (a test's fault hook).

        ``NotDurable`` after the last chunk when fewer replicas than ``replica_wait`` asks hold
        them all: they are stored on the primary all the same."""
        if not self.replica_wait.enabled:
            return self._create_many(self.redis.pipeline, jobs, chunk, fence, after_chunk)
        with HeldConnection(self.redis) as held:
            stored = self._create_many(held.pipeline, jobs, chunk, fence, after_chunk)
            # One WAIT for all chunks: it covers every earlier write of the connection.
            acked = held.wait(self.replica_wait)
        if acked < self.replica_wait.replicas:
            raise NotDurable(acked, self.replica_wait, stored=stored)
        return stored

    def _create_many(
        self,
        pipeline: Callable[[bool], redis.client.Pipeline],
        jobs: list[tuple[Job, list[bytes]]],
        chunk: int,
        fence: batches.BatchFence | None,
        after_chunk: Callable[[int], None] | None,
    ) -> list[Job]:
        stored: list[Job] = []
        for index, start in enumerate(range(0, len(jobs), chunk)):
            while True:
                with pipeline(True) as pipe:
                    try:
                        stored_now = self._commit_chunk(pipe, jobs[start : start + chunk], fence)
                    except redis.WatchError:  # a job of the batch counted itself: once more
                        continue
                stored.extend(stored_now)
                break
            if after_chunk is not None:
                after_chunk(index)
        return stored

    def _commit_chunk(
        self,
        pipe: redis.client.Pipeline,
        jobs: list[tuple[Job, list[bytes]]],
        fence: batches.BatchFence | None,
    ) -> list[Job]:
        if fence is not None:
            pipe.watch(fence.key)
            fence.check(pipe)
            pipe.multi()
        stored = []
        for job, images in jobs:
            job = replace(
                job, expires_at=job.created_at + self.retention_s, dispatched_at=job.created_at
            )
            self._stage_new(pipe, job, images)
            stored.append(job)
        if fence is not None:
            fence.stage_stored(pipe, len(stored))
        oldest = time.time() - self.retention_s
        pipe.zremrangebyscore(queued_key(), "-inf", oldest)
        pipe.zremrangebyscore(queued_batch_key(), "-inf", oldest)
        for queue in {job.queue for job in stored}:
            stage_lane_cleanup(pipe, queue, oldest)
        pipe.execute()
        return stored

    def _stage_new(self, pipe: redis.client.Pipeline, job: Job, images: list[bytes]) -> None:
        pipe.hset(job_key(job.id), mapping=job.to_hash())
        pipe.rpush(images_key(job.id), *images)
        pipe.expire(job_key(job.id), self.retention_s)
        pipe.expire(images_key(job.id), self.retention_s)
        pipe.zadd(queued_key(), {job.id: job.created_at})
        pipe.zadd(_lane_key(job), {job.id: job.created_at})
        if job.batch_id:
            pipe.zadd(queued_batch_key(), {job.id: job.created_at})
        # The caller dispatches the job at once and says so (``dispatched``); if it dies
        # first, a reaper sends the message once this entry is due.
        pipe.zadd(dispatching_key(), {job.id: job.created_at + DISPATCH_GRACE_S})
        job_metrics.stage_submitted(pipe)
        stage_entry(pipe, job, self.retention_s)  # GET /v1/jobs lists it from now on

    def dispatched(self, job_id: str) -> None:
        """The job's broker message was sent: no reaper needs to send one."""
        self.redis.zrem(dispatching_key(), job_id)

    def queued_count(self) -> int:
        """Jobs accepted and not yet started, across all queues and workers."""
        return int(self.redis.zcard(queued_key()))

    def queued_batch_count(self) -> int:
        """Those of the queued jobs that belong to a batch."""
        return int(self.redis.zcard(queued_batch_key()))

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job its queue's workers take (``core/queue_position.py``); None if
        the job is not queued."""
        return queue_positions(self.redis, [(job.id, job.queue, job.priority)]).get(job.id)

    def get(self, job_id: str) -> Job | None:
        raw = self.redis.hgetall(job_key(job_id))
        return Job.from_hash(raw) if raw else None  # type: ignore[arg-type]

    def dispatch_states(self, job_ids: list[str]) -> list[DispatchState | None]:
        """Each job's ``DispatchState`` (None for a job that is gone), in one round trip. The
        reapers read these for up to a thousand jobs a pass; whole records (question, params,
        result JSON) cost a worker's process tens of milliseconds of GIL per pass beside its
        engine thread."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(job_key(job_id), "status", "dispatched_at", "queue")
        return [
            None
            if status is None
            else DispatchState(
                JobStatus(status.decode()),
                float(dispatched_at or 0),
                (queue or b"").decode(),
            )
            for status, dispatched_at, queue in pipe.execute()
        ]

    def images(self, job_id: str) -> list[bytes]:
        return self.redis.lrange(images_key(job_id), 0, -1)  # type: ignore[return-value]

    def claim(
        self, job_id: str, *, max_attempts: int, worker: str = "", lease_s: float = 15.0
    ) -> Claim:
        """Start a delivery of the job by ``worker``, leased for ``lease_s``: queued (or running
        under a lapsed lease) becomes running. A running job whose lease holds is left alone."""

        def decide(job: Job | None) -> tuple[Claim, Job | None]:
            if job is None:
                return Claim(ClaimOutcome.MISSING, None), None
            if job.status.is_terminal:
                return Claim(ClaimOutcome.ALREADY_TERMINAL, job), None
            now = time.time()
            if job.status is JobStatus.RUNNING and job.lease_until > now:
                return Claim(ClaimOutcome.OWNED, job), None
            if job.cancel_requested_at is not None:
                canceled = self._ended(job, JobStatus.CANCELED, error=_CANCELED_WHILE_RUNNING)
                return Claim(ClaimOutcome.CANCELED, canceled), canceled
            # Read after ``now``: a batch canceled once this found no cancel is canceled after
            # this job's start, so a job never starts after its batch's cancel was asked.
            if job.batch_id and batches.cancel_requested(self.redis, job.batch_id):
                canceled = self._ended(
                    job, JobStatus.CANCELED, cancel_requested_at=now, error=_BATCH_CANCELED
                )
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
                worker=worker,
                lease_until=now + lease_s,
            )
            return Claim(ClaimOutcome.CLAIMED, running), running

        return self._update(job_id, decide)

    def requeue_lapsed(self, job_id: str) -> Job | None:
        """Put a running job whose lease lapsed back in the queue; the job, or None if it was
        not (finished, renewed, or already put back: one caller wins, whatever the race).

        Its attempt stays counted. A job asked to cancel meanwhile ends ``canceled`` instead.
        The job is marked as needing a broker message, due at once (``take_due_dispatches``).
        """

        def decide(job: Job | None) -> tuple[Job | None, Job | None]:
            now = time.time()
            if job is None or job.status is not JobStatus.RUNNING or job.lease_until > now:
                return None, None
            if job.cancel_requested_at is not None:
                done = self._ended(job, JobStatus.CANCELED, error=_CANCELED_WHILE_RUNNING)
                return done, done
            queued = job.moved_to(
                JobStatus.QUEUED,
                started_at=None,
                attempt_token="",
                worker="",
                lease_until=0.0,
                dispatched_at=now,
            )
            return queued, queued

        return self._update(job_id, decide)

    def overdue_queued(self, now: float, oldest: int = 200) -> list[str]:
        """Queued jobs among the ``oldest`` whose deadline passed by ``now`` (candidates for
        ``time_out_queued``). The oldest first: whatever the backlog, a job queued longer
        than the longest deadline is always among them."""
        found: list[tuple[bytes, float]] = self.redis.zrange(  # type: ignore[assignment]
            queued_key(), 0, oldest - 1, withscores=True
        )
        if not found:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id, _ in found:
            pipe.hget(job_key(_text(job_id)), "params")
        return [
            _text(job_id)
            for (job_id, created_at), params in zip(found, pipe.execute(), strict=True)
            if params is not None and created_at + _timeout_s(params) <= now
        ]

    def time_out_queued(self, job_id: str) -> Job | None:
        """End a job still queued past its deadline ``failed`` with ``timeout`` (its stale
        message then finds it finished); the job, or None if it was not (started, finished,
        or not yet due). So no job outlives its deadline, backlog or no worker."""

        def decide(job: Job | None) -> tuple[Job | None, Job | None]:
            if job is None or job.status is not JobStatus.QUEUED:
                return None, None
            if job.created_at + job.params.timeout_s > time.time():
                return None, None
            timed_out = self._ended(
                job,
                JobStatus.FAILED,
                error={
                    "code": "timeout",
                    "message": "the job passed its deadline (timeout_s) before it started",
                },
            )
            return timed_out, timed_out

        return self._update(job_id, decide)

    def lapsed_leases(self, now: float, limit: int = 1000) -> list[str]:
        """Running jobs whose lease ended by ``now`` (candidates for ``requeue_lapsed``)."""
        ids = self.redis.zrangebyscore(leases_key(), "-inf", now, start=0, num=limit)
        return [_text(i) for i in ids]  # type: ignore[arg-type]

    def renew_leases(self, held: dict[str, str], lease_s: float) -> int:
        """Extend the leases of the deliveries in ``held`` (job id -> attempt token) by
        ``lease_s`` from now; those another delivery took over are left alone. How many held."""
        if not held:
            return 0
        flat = [item for pair in held.items() for item in pair]
        renewed = self._renew(keys=[leases_key()], args=[time.time() + lease_s, job_key(""), *flat])
        return int(renewed)

    def needs_dispatch(self, job_id: str, *, due: float) -> None:
        """Ask a reaper to send the job a new broker message from ``due`` on."""
        self.redis.zadd(dispatching_key(), {job_id: due})

    def take_due_dispatches(self, now: float, retry_after_s: float, limit: int = 1000) -> list[str]:
        """Queued jobs whose message is due by ``now``; each is taken by one caller only, and
        comes due again after ``retry_after_s`` unless the taker calls ``dispatched``."""
        taken = self._take_due(keys=[dispatching_key()], args=[now, now + retry_after_s, limit])
        return [_text(i) for i in taken]

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
        counted_in_batch: list[str] = []  # the batch a finishing job was counted in
        finished: list[bool] = []  # whether the transaction stored a terminal record

        def transaction(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hgetall(key)
            current = Job.from_hash(raw) if raw else None  # type: ignore[arg-type]
            outcome, new = decide(current)
            answer[:] = [outcome]
            counted_in_batch.clear()
            finished.clear()
            if new is None:
                return
            now = time.time()
            finishing = new.status.is_terminal
            finished[:] = [finishing]
            pipe.multi()
            pipe.hset(key, mapping=new.to_hash())
            if new.status is not JobStatus.QUEUED:
                pipe.zrem(queued_key(), job_id)
                pipe.zrem(_lane_key(new), job_id)
                pipe.zrem(dispatching_key(), job_id)
            elif current is not None and current.status is not JobStatus.QUEUED:
                pipe.zadd(queued_key(), {job_id: new.created_at})
                pipe.zadd(_lane_key(new), {job_id: new.created_at})
                pipe.zadd(dispatching_key(), {job_id: new.dispatched_at})
            if new.status is JobStatus.RUNNING:
                pipe.zadd(leases_key(), {job_id: new.lease_until})
            else:
                pipe.zrem(leases_key(), job_id)
            for kind in webhook_events.events_for(current, new):
                event = webhook_events.WebhookEvent.for_job(new, kind, now)
                webhook_events.stage(pipe, event, ttl_s=self.event_ttl_s)
            if finishing:
                pipe.delete(images_key(job_id))
                pipe.expire(key, self.retention_s)
                pipe.publish(done_channel(job_id), new.status.value)
                # Counted in the transaction that stores the outcome: exactly once per job.
                job_metrics.stage_finished(pipe, new)
            elif new.cancel_requested_at is not None and (
                current is not None and current.cancel_requested_at is None
            ):
                pipe.publish(cancel_channel(), job_id)
            if new.batch_id:
                self._stage_batch_move(pipe, current, new, counted_in_batch)

        if self.replica_wait.enabled:
            with HeldConnection(self.redis) as held:
                replies: list[Any] = held.transaction(transaction, key)
                if finished:
                    self._wait_for_outcome(held, job_id)
        else:
            replies = self.redis.transaction(transaction, key) or []
        if counted_in_batch and int(replies[-1]) <= 0:
            # This job was the batch's last pending one (core/batches.py, step 2).
            batches.finish_if_done(
                self.redis, counted_in_batch[0], self.retention_s, self.event_ttl_s
            )
        return answer[0]

    def _wait_for_outcome(self, held: HeldConnection, job_id: str) -> None:
        """``WAIT`` until the replicas hold a job's outcome, a few rounds; then go on, logged.

        An outcome the replicas never took comes back after a failover as the record before it
        (running, its lease lapses: the job runs again), so waiting longer is worth it; but a
        replica down for good must not stop the fleet, so after the rounds the job goes on."""
        for _ in range(_OUTCOME_WAIT_ROUNDS):
            if held.wait(self.replica_wait) >= self.replica_wait.replicas:
                return
        log.warning(
            "job %s: its outcome is stored, but fewer than %d replicas took it within %d ms "
            "(%d times); a failover now would run it again",
            job_id,
            self.replica_wait.replicas,
            self.replica_wait.timeout_ms,
            _OUTCOME_WAIT_ROUNDS,
        )

    def _stage_batch_move(
        self, pipe: redis.client.Pipeline, current: Job | None, new: Job, counted: list[str]
    ) -> None:
        """The batch's side of a move of one of its jobs, in the same MULTI; staged last (the
        transaction's last reply is then the batch's pending count, when ``counted``)."""
        if new.status is not JobStatus.QUEUED:
            pipe.zrem(queued_batch_key(), new.id)
        elif current is not None and current.status is not JobStatus.QUEUED:
            pipe.zadd(queued_batch_key(), {new.id: new.created_at})
        if new.status is JobStatus.RUNNING and current is not None and not current.started_at:
            batches.stage_job_started(pipe, new)
        if new.status.is_terminal and not (current is not None and current.status.is_terminal):
            batches.stage_job_finished(pipe, new, self.retention_s)
            counted.append(new.batch_id)


def _lane_key(job: Job) -> str:
    return queued_lane_key(job.queue, job.priority.value)


# A new job's message is sent by the API right after it is stored; a reaper sends it only if the
# API has not said it did within this many seconds (it died, or Redis went away, in between).
DISPATCH_GRACE_S = 10.0

# KEYS[1] leases; ARGV: new deadline, job key prefix, then job id, attempt token pairs. A lease
# is extended only for the delivery that holds it (same token, still running), in the job record
# too: a reaper's transaction watching the record then sees the renewal and backs off.
_RENEW_LEASES = """
local renewed = 0
for i = 3, #ARGV, 2 do
  local key = ARGV[2] .. ARGV[i]
  local fields = redis.call('HMGET', key, 'status', 'attempt_token')
  if fields[1] == 'running' and fields[2] == ARGV[i + 1] then
    redis.call('HSET', key, 'lease_until', ARGV[1])
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
    renewed = renewed + 1
  end
end
return renewed
"""

# KEYS[1] dispatching; ARGV: now, when a taken entry comes due again, most entries to take.
_TAKE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return ids
"""

_CANCELED_WHILE_RUNNING = {"code": "canceled", "message": "the job was canceled while it ran"}
_BATCH_CANCELED = {"code": "canceled", "message": "the job's batch was canceled before it ran"}


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


def _timeout_s(params: bytes) -> float:
    return float(JobParams(**json.loads(params)).timeout_s)


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key
