"""Bring back the work of dead workers within seconds, not after the broker's visibility timeout.

Every GPU worker runs a ``Reaper`` (a daemon thread, ``ReaperThread``); each pass, safe to run
in any number of processes at once:

1. **Lapsed leases.** A running job carries its worker's lease, renewed by that worker's
   heartbeat. A job whose lease ended goes back to the queue (``JobStore.requeue_lapsed``: one
   transaction on the job record, so exactly one reaper wins) with its attempt counted.
2. **Orphaned messages.** A message a worker took from the broker but never started (its job is
   still ``queued``) sits in kombu's ``unacked`` set of the Redis transport until the visibility
   timeout (``broker_layout`` reads kombu's keys). An entry older than the lease whose job is
   still queued and was not dispatched since is removed (one ``ZREM`` wins) and the job marked
   as needing a message.
3. **Overdue queued jobs.** A job still queued past its deadline ends ``failed`` with
   ``timeout`` (``JobStore.time_out_queued``), so that no job outlives its deadline whatever the
   backlog, and its record is kept the retention time from then.
4. **Due dispatches.** Jobs marked as needing a message (by 1, 2, or a new job whose sender died
   before it sent one) get a new Celery message; each entry is taken by one reaper at a time.
5. **Unsettled batches** (``BatchStore.settle_due``). A batch whose API process died while it
   stored its jobs, with no retry since, is cut short; one whose last job's process died before
   it finished the batch is finished. Reads of the batch do the same, but a caller that waits
   for the batch's webhook never reads it.

A duplicate message is harmless: the claim in the store finds the job terminal, or running under
a live lease, and changes nothing. A stale delivery cannot store an outcome (attempt tokens).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from . import broker_layout as broker
from .core.batches import BatchStore
from .core.keys import queued_key
from .core.priority import lane_queue, lane_queues
from .core.status import JobStatus
from .core.store import DispatchState, JobStore
from .queue import RUN_JOB_TASK

__all__ = ["ReapReport", "Reaper", "ReaperThread"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReapReport:
    requeued: int = 0  # running jobs whose lease lapsed, back in the queue
    orphans: int = 0  # messages taken by a worker that never started them
    dispatched: int = 0  # new messages sent
    timed_out: int = 0  # queued jobs past their deadline, ended ``timeout``
    batches: int = 0  # batches cut short or finished

    def __bool__(self) -> bool:
        counts = (self.requeued, self.orphans, self.dispatched, self.timed_out, self.batches)
        return any(counts)


class Reaper:
    def __init__(
        self,
        store: JobStore,
        dispatch: Callable[[str, str], None],
        *,
        lease_s: float,
        queue: str,
        audit_limit: int = 2000,
    ) -> None:
        self.store = store
        self.redis: redis.Redis = store.redis
        self.batches = BatchStore(
            store.redis, retention_s=store.retention_s, event_ttl_s=store.event_ttl_s
        )
        self.dispatch = dispatch  # (job id, queue) -> a new broker message for it
        self.lease_s = lease_s
        self.queue = queue  # the broker queue (kombu keeps its waiting messages in a list per lane)
        self.lanes = lane_queues(queue)
        self.audit_limit = audit_limit

    def reap_once(self) -> ReapReport:
        now = time.time()
        requeued = sum(
            1 for job_id in self.store.lapsed_leases(now) if self._requeue(job_id) is not None
        )
        orphans = self._orphaned_messages(now - self.lease_s) + self._lost_messages(now)
        timed_out = sum(
            1
            for job_id in self.store.overdue_queued(now)
            if self.store.time_out_queued(job_id) is not None
        )
        dispatched = 0
        for job_id in self.store.take_due_dispatches(now, retry_after_s=self.lease_s):
            job = self.store.get(job_id)
            if job is None or job.status is not JobStatus.QUEUED:
                self.store.dispatched(job_id)  # nothing to send any more
                continue
            # To its own queue and lane, whichever ones this reaper's worker consumes.
            self.dispatch(job_id, lane_queue(job.queue or self.queue, job.priority))
            self.store.dispatched(job_id)
            dispatched += 1
        batches = self.batches.settle_due(now)
        report = ReapReport(requeued, orphans, dispatched, timed_out, batches)
        if report:
            log.warning(
                "reaper: %d job(s) of dead workers back in the queue, %d orphaned message(s), "
                "%d message(s) sent, %d queued job(s) past their deadline ended (timeout), "
                "%d abandoned batch(es) cut short or finished",
                *(requeued, orphans, dispatched, timed_out, batches),
            )
        return report

    def _requeue(self, job_id: str) -> object:
        job = self.store.requeue_lapsed(job_id)
        if job is not None:
            log.warning("job %s: its worker's lease lapsed; back in the queue", job_id)
        return job

    def _orphaned_messages(self, delivered_before: float) -> int:
        return self._return_messages(broker.unacked_delivered_before(self.redis, delivered_before))

    def return_messages(self, delivery_tags: list[str]) -> int:
        """A worker stopping now hands back the messages it took and did not start: their jobs
        get a new message at the next pass of any reaper, not a lease later. How many."""
        delivered = zip(
            delivery_tags, broker.unacked_delivered_at(self.redis, delivery_tags), strict=True
        )
        return self._return_messages([(tag, at) for tag, at in delivered if at is not None])

    def _return_messages(self, entries: Sequence[tuple[bytes | str, float]]) -> int:
        """``_return_message`` for each ``unacked`` (tag, delivered at), its entry and job read
        in two round trips for them all. How many were marked."""
        if not entries:
            return 0
        envelopes = broker.unacked_envelopes(self.redis, [t for t, _ in entries])
        ours = [
            (tag, float(at), job_id)
            for (tag, at), envelope in zip(entries, envelopes, strict=True)
            if (job_id := _job_id_of(envelope)) is not None
        ]  # not a webhook task's, not gone
        jobs = self.store.dispatch_states([job_id for _, _, job_id in ours])
        return sum(
            self._return_message(tag, at, job_id, job)
            for (tag, at, job_id), job in zip(ours, jobs, strict=True)
        )

    def _return_message(
        self, tag: bytes | str, delivered_at: float, job_id: str, job: DispatchState | None
    ) -> bool:
        """Drop the ``unacked`` entry ``tag`` and mark its job for a new message, unless the
        job runs (leases decide then) or has a newer message; True if marked."""
        if job is not None and job.status is JobStatus.RUNNING:
            return False  # its delivery (or a later one) holds a lease: leases decide
        # Removed by one reaper only; kombu's ack or restore of a removed tag does nothing.
        removed = broker.forget_unacked(self.redis, tag)
        if not removed or job is None or job.status is not JobStatus.QUEUED:
            return False  # someone else's, or a stale copy for a finished or unknown job
        if job.dispatched_at > delivered_at:
            return False  # a newer message exists (the job was put back since)
        self.store.needs_dispatch(job_id, due=0)
        return True

    def _lost_messages(self, now: float) -> int:
        """Queued jobs that waited a lease since their message was sent, whose message is
        neither waiting in the broker's list nor held by a worker: a worker killed between
        popping it and recording it (kombu's Redis transport is not atomic there) lost it.

        Looked for only while the broker's list is short (it is read whole); a job waiting
        behind a long backlog is almost surely in it, and is audited once the backlog drains.
        """
        cutoff = now - self.lease_s
        candidates: list[bytes] = self.redis.zrangebyscore(  # type: ignore[assignment]
            queued_key(), "-inf", cutoff, start=0, num=1000
        )
        if not candidates or self._waiting_messages() > self.audit_limit:
            return 0
        ids = [c.decode() for c in candidates]
        # Only jobs sent to the lists read here: another queue's are in other lists.
        waiting = [
            job_id
            for job_id, j in zip(ids, self.store.dispatch_states(ids), strict=True)
            if j
            and j.status is JobStatus.QUEUED
            and j.dispatched_at < cutoff
            and j.queue in ("", self.queue)
        ]
        if not waiting:
            return 0
        present = {
            _job_id_of(envelope)
            for envelope in [
                *(e for lane in self.lanes for e in broker.waiting_envelopes(self.redis, lane)),
                *broker.unacked_envelopes(self.redis),
            ]
        }
        lost = [job_id for job_id in waiting if job_id not in present]
        for job_id in lost:
            log.warning("job %s: its message was lost with a killed worker; sent again", job_id)
            self.store.needs_dispatch(job_id, due=0)
        return len(lost)

    def _waiting_messages(self) -> int:
        """Messages waiting in the broker, in all the lanes of this reaper's queue."""
        return sum(broker.queue_length(self.redis, lane) for lane in self.lanes)


def _job_id_of(envelope: object) -> str | None:
    """The job id a broker message carries (its task id); None if it is not a run-job task."""
    task = broker.task_of(envelope)
    return task[1] if task is not None and task[0] == RUN_JOB_TASK else None


class ReaperThread:
    """Runs ``reaper.reap_once`` every ``period_s`` in a daemon thread; Redis errors are logged
    and the next pass tries again."""

    def __init__(self, reaper: Reaper, period_s: float) -> None:
        self.reaper = reaper
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.reaper.reap_once()
            except Exception as exc:  # a Redis restart, a broker blip: try again next pass
                log.warning("reaper pass failed: %s", exc)
