"""Batches: many jobs submitted in one request and followed as one record.

A batch is a hash (``keys.batch_key``: the record and its counters) and a list of its lines in
input order (``keys.batch_lines_key``): each entry the line's job id, or, for a line refused at
validation, its error as JSON. Its jobs are ordinary jobs (owner, retention, webhooks of their
own) that carry ``batch_id`` and ``custom_id``.

The counts are exact because each job's terminal transaction writes them:

1. ``stage_job_finished`` runs inside ``JobStore._update``'s MULTI when a batch's job reaches a
   terminal state: it adds one to the counter of that state and takes one from ``pending``, both
   with ``HINCRBY``, so concurrent finishes neither lose a count nor contend (nothing WATCHes the
   batch on this path). A job reaches a terminal state once, so it is counted once.
2. The one transaction whose ``HINCRBY`` brought ``pending`` to 0 calls ``finish_if_done``:
   under WATCH, a batch that is not terminal and has nothing pending becomes ``completed`` (or
   ``canceled`` when a cancel was asked), gets ``finished_at``, and its webhook event is staged
   in the same MULTI. A second caller finds it terminal and writes nothing, so the event is
   staged exactly once.
3. A process that dies between 1 and 2 leaves a batch with nothing pending that is not yet
   terminal; every read of the batch (``GET /v1/batches/<id>``) calls ``finish_if_done`` too,
   and so do the workers' reapers (``settle_due``), for a batch that nobody reads.

Storing is crash-safe (a batch's jobs are written in chunked transactions, so an API process can
die between two of them). The record is created *storing*: it names its storer (a random token)
and a lease (``storing_until``, ``STORING_LEASE_S`` ahead). Each chunk's transaction WATCHes the
record, checks the storer is still its own (``BatchFence``), adds the chunk's size to ``stored``
and renews the lease; the last step clears the lease (``finish_storing``). A storer that died
leaves a record storing with an expired lease, and jobs stored for a prefix of its lines:

- a retry with the batch's Idempotency-Key takes the lease over (``take_over``: a new token,
  which fences out the old storer should it be alive after all) and stores the missing jobs,
  under the ids the lines list already holds, so the batch completes with every line once;
- with nobody retrying, a read of the batch ``CUT_SHORT_AFTER_S`` after the lease expired cuts
  it short (``cut_short_if_abandoned``): its ``jobs`` become the jobs stored, the rest leave
  ``pending``, and it completes when those have run, with ``cut_short`` set. A reaper does the
  same for a batch nobody reads, so that its webhook still comes.

Every batch that is not terminal when created is listed in ``unsettled_batches_key`` until it
is, with the time a reaper should look at it next (``settle_due``): every ``RECHECK_S``. A
reaper's look is a read with ``settle``; it also finishes a batch whose final record a Redis
failover lost (the list is rolled back with it).

Nothing here imports the job store: the store calls in (steps 1 and 2).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import redis

from . import webhook_events
from .idempotency import KeyClaim
from .job import Job, iso8601, new_job_id
from .keys import batch_key, batch_lines_key, unsettled_batches_key
from .redis_client import HashFields

__all__ = [
    "BATCH_EVENT_TYPES",
    "CUT_SHORT_AFTER_S",
    "MAX_INLINE_ERRORS",
    "Batch",
    "BatchFence",
    "BatchStatus",
    "BatchStore",
    "LineError",
    "StorerSuperseded",
    "cancel_requested",
    "finish_if_done",
    "is_job_id",
    "stage_job_finished",
    "stage_job_started",
]

# The batch object lists this many line errors; the results stream has every one.
MAX_INLINE_ERRORS = 1000
# Lines pushed (or read) per Redis command.
LINES_PER_COMMAND = 1000
# Seconds a storer may go without committing a chunk before its batch counts as abandoned: a
# chunk of jobs is one transaction (milliseconds), so this is only ever reached by a dead process.
STORING_LEASE_S = 10.0
# Seconds past its storer's lease before a read cuts an abandoned batch short: until then only
# the caller's retry (with its Idempotency-Key) may finish it, and it does so whole. A caller
# whose own process died retries minutes later, not seconds.
CUT_SHORT_AFTER_S = 300.0

# Seconds between two looks of a reaper at a batch that is still not terminal.
RECHECK_S = 60.0

BATCH_EVENT_TYPES = ("batch.completed", "batch.canceled", "batch.failed")


class BatchStatus(StrEnum):
    VALIDATING = "validating"  # its jobs are still being stored (never a stored status)
    QUEUED = "queued"  # no job of the batch has started yet
    RUNNING = "running"  # some job has started or finished; some are still pending
    COMPLETED = "completed"  # every job finished (succeeded or failed)
    CANCELED = "canceled"  # canceled: every job finished, ran, or was canceled
    FAILED = "failed"  # no line was valid: there was nothing to run

    @property
    def is_terminal(self) -> bool:
        return self in (BatchStatus.COMPLETED, BatchStatus.CANCELED, BatchStatus.FAILED)


@dataclass(frozen=True)
class LineError:
    """Why one input line did not become a job."""

    line: int  # 1-based: the JSON Lines line number, or the array index + 1
    custom_id: str | None
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "custom_id": self.custom_id,
            "code": self.code,
            "message": self.message,
        }


@dataclass(frozen=True)
class Batch:
    id: str
    owner: str
    created_at: float
    total: int  # input lines, valid or not
    jobs: int  # lines that became jobs
    expires_at: float = 0.0
    # Counters: ``pending`` jobs are queued or running; the others reached that terminal state.
    pending: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    # QUEUED until the batch is terminal; what callers see as running is derived (``status``).
    stored_status: BatchStatus = BatchStatus.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    cancel_requested_at: float | None = None
    webhook_url: str | None = None
    metadata: dict[str, Any] | None = None
    errors: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # the first few
    invalid: int = 0
    # Storing (module doc): jobs stored so far, and while storing its storer and lease.
    stored: int = 0
    storer: str | None = None
    storing_until: float | None = None
    cut_short: bool = False  # its storer died and nobody retried: ``jobs`` are those stored

    @classmethod
    def new(
        cls,
        owner: str,
        *,
        batch_id: str = "",
        total: int,
        jobs: int,
        errors: list[LineError],
        webhook_url: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Batch:
        return cls(
            id=batch_id or new_job_id(),
            owner=owner,
            created_at=time.time(),
            total=total,
            jobs=jobs,
            pending=jobs,
            invalid=len(errors),
            errors=tuple(e.to_dict() for e in errors[:MAX_INLINE_ERRORS]),
            webhook_url=webhook_url,
            metadata=metadata,
        )

    @property
    def status(self) -> BatchStatus:
        if self.stored_status.is_terminal:
            return self.stored_status
        if self.storing_until is not None:
            return BatchStatus.VALIDATING
        if self.started_at is not None or self.pending < self.jobs:
            return BatchStatus.RUNNING
        return BatchStatus.QUEUED

    def to_hash(self) -> HashFields:
        # No started_at field until a job starts: ``stage_job_started`` sets it with HSETNX.
        started = {} if self.started_at is None else {"started_at": json.dumps(self.started_at)}
        return started | {
            "id": self.id,
            "owner": self.owner,
            "created_at": repr(self.created_at),
            "expires_at": repr(self.expires_at),
            "total": str(self.total),
            "jobs": str(self.jobs),
            "invalid": str(self.invalid),
            "pending": str(self.pending),
            "succeeded": str(self.succeeded),
            "failed": str(self.failed),
            "canceled": str(self.canceled),
            "status": self.stored_status.value,
            "finished_at": json.dumps(self.finished_at),
            "cancel_requested_at": json.dumps(self.cancel_requested_at),
            "webhook_url": self.webhook_url or "",
            "metadata": json.dumps(self.metadata),
            "errors": json.dumps(list(self.errors)),
            "stored": str(self.stored),
            "storer": self.storer or "",
            "storing_until": json.dumps(self.storing_until),
            "cut_short": "1" if self.cut_short else "0",
        }

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> Batch | None:
        """The batch, or None for a hash that holds only counters (its record expired)."""
        h = {k.decode(): v.decode() for k, v in raw.items()}
        if "id" not in h:
            return None
        return cls(
            id=h["id"],
            owner=h["owner"],
            created_at=float(h["created_at"]),
            expires_at=float(h["expires_at"]),
            total=int(h["total"]),
            jobs=int(h["jobs"]),
            invalid=int(h["invalid"]),
            pending=int(h["pending"]),
            succeeded=int(h["succeeded"]),
            failed=int(h["failed"]),
            canceled=int(h["canceled"]),
            stored_status=BatchStatus(h["status"]),
            started_at=json.loads(h.get("started_at", "null")),
            finished_at=json.loads(h["finished_at"]),
            cancel_requested_at=json.loads(h["cancel_requested_at"]),
            webhook_url=h["webhook_url"] or None,
            metadata=json.loads(h["metadata"]),
            errors=tuple(json.loads(h["errors"])),
            # Records from before crash-safe storing have none of these: stored whole.
            stored=int(h.get("stored", h["jobs"])),
            storer=h.get("storer") or None,
            storing_until=json.loads(h.get("storing_until", "null")),
            cut_short=h.get("cut_short") == "1",
        )

    def is_abandoned(self, now: float, *, for_s: float = 0.0) -> bool:
        """Still storing, and its storer has not renewed its lease in time (``for_s`` ago or
        more): it died."""
        return (
            not self.stored_status.is_terminal
            and self.storing_until is not None
            and self.storing_until + for_s < now
        )

    def to_public(self) -> dict[str, Any]:
        """The batch object of the HTTP API and of its webhooks."""
        return {
            "id": self.id,
            "object": "batch",
            "status": self.status.value,
            "created_at": iso8601(self.created_at),
            "started_at": iso8601(self.started_at),
            "finished_at": iso8601(self.finished_at),
            "expires_at": iso8601(self.expires_at),
            "cancel_requested_at": iso8601(self.cancel_requested_at),
            "counts": {
                "total": self.total,
                "invalid": self.invalid,
                "jobs": self.jobs,
                "pending": self.pending,
                "succeeded": self.succeeded,
                "failed": self.failed,
                "canceled": self.canceled,
            },
            "metadata": self.metadata,
            "webhook": (
                {"url": self.webhook_url, "events": list(BATCH_EVENT_TYPES)}
                if self.webhook_url
                else None
            ),
            "errors": list(self.errors),
            "errors_truncated": self.invalid > len(self.errors),
            "cut_short": self.cut_short,
            "results_url": f"/v1/batches/{self.id}/results",
        }


class BatchStore:
    def __init__(self, client: redis.Redis, *, retention_s: int, event_ttl_s: float) -> None:
        self.redis = client
        self.retention_s = retention_s
        self.event_ttl_s = event_ttl_s

    def create(
        self, batch: Batch, lines: list[str], *, key: KeyClaim | None = None
    ) -> tuple[Batch, BatchFence | None]:
        """Store a new batch and its lines (job ids, or errors as JSON), before its jobs exist:
        a job that finishes at once must find the record to count itself in. A batch without a
        job is stored ``failed`` (and its webhook staged) at once: nothing will finish it; one
        with jobs is stored *storing* (module doc), and the fence its chunks commit under.

        ``key`` binds an Idempotency-Key to the batch in the same transaction
        (``KeyAlreadyBound`` when it is bound to another batch that still exists)."""
        now = time.time()
        batch = replace(batch, expires_at=batch.created_at + self.retention_s)
        fence: BatchFence | None = None
        if batch.jobs == 0:
            batch = replace(
                batch,
                stored_status=BatchStatus.FAILED,
                finished_at=now,
                expires_at=now + self.retention_s,
            )
        else:
            fence = BatchFence(batch.id, uuid.uuid4().hex)
            batch = replace(batch, storer=fence.token, storing_until=now + STORING_LEASE_S)

        def write(pipe: redis.client.Pipeline) -> None:
            if key is not None:
                key.check_free(pipe, batch_key)
            pipe.multi()
            pipe.hset(batch_key(batch.id), mapping=batch.to_hash())
            pipe.expire(batch_key(batch.id), self.retention_s)
            for start in range(0, len(lines), LINES_PER_COMMAND):
                pipe.rpush(batch_lines_key(batch.id), *lines[start : start + LINES_PER_COMMAND])
            pipe.expire(batch_lines_key(batch.id), self.retention_s)
            if batch.stored_status.is_terminal:
                _stage_event(pipe, batch, now, self.event_ttl_s)
            else:
                pipe.zadd(unsettled_batches_key(), {batch.id: now + RECHECK_S})
            if key is not None:
                key.stage_binding(pipe, batch.id)

        self.redis.transaction(write, *([key.name] if key is not None else []))
        return batch, fence

    def take_over(self, batch_id: str) -> tuple[Batch, BatchFence] | None:
        """Become the storer of a batch whose storer died (its lease expired): the batch and the
        new fence, or None if it is not storing or its storer's lease still runs."""
        key = batch_key(batch_id)
        fence = BatchFence(batch_id, uuid.uuid4().hex)
        taken: list[tuple[Batch, BatchFence] | None] = [None]

        def transaction(pipe: redis.client.Pipeline) -> None:
            taken[0] = None
            batch = _read(pipe, key)
            if batch is None or not batch.is_abandoned(time.time()):
                return
            until = time.time() + STORING_LEASE_S
            pipe.multi()
            pipe.hset(key, mapping={"storer": fence.token, "storing_until": json.dumps(until)})
            taken[0] = (replace(batch, storer=fence.token, storing_until=until), fence)

        self.redis.transaction(transaction, key)
        return taken[0]

    def finish_storing(self, fence: BatchFence, dropped: dict[int, LineError]) -> Batch | None:
        """The last step of storing: clear the lease; ``dropped`` are lines (0-based index) whose
        job a resuming storer could not store (they no longer validate): they become invalid
        lines. The batch, or None if another storer took it over (``StorerSuperseded``)."""
        key = batch_key(fence.batch_id)
        done: list[Batch | None] = [None]

        def transaction(pipe: redis.client.Pipeline) -> None:
            batch = _read(pipe, key)
            if batch is not None and batch.stored_status.is_terminal and not dropped:
                # Its jobs all ran before this (``finish_if_done`` cleared the lease).
                done[0] = batch
                return
            fence.check(pipe)
            assert batch is not None  # it has this storer
            gone = len(dropped)
            now_batch = replace(
                batch,
                storer=None,
                storing_until=None,
                jobs=batch.jobs - gone,
                pending=batch.pending - gone,
                invalid=batch.invalid + gone,
            )
            pipe.multi()
            pipe.hset(key, mapping={"storer": "", "storing_until": "null"})
            if gone:
                pipe.hincrby(key, "jobs", -gone)
                pipe.hincrby(key, "invalid", gone)
                for index, error in dropped.items():
                    pipe.lset(batch_lines_key(fence.batch_id), index, json.dumps(error.to_dict()))
                pipe.hincrby(key, "pending", -gone)
            done[0] = now_batch

        self.redis.transaction(transaction, key)
        if done[0] is not None and done[0].pending <= 0:
            return self.finish_if_done(fence.batch_id) or done[0]
        return done[0]

    def cut_short_if_abandoned(self, batch_id: str) -> Batch | None:
        """Finish storing a batch whose storer died, from what it stored (module doc): the
        batch so cut short, or None if it is not abandoned."""
        key = batch_key(batch_id)
        cut: list[Batch | None] = [None]

        def transaction(pipe: redis.client.Pipeline) -> None:
            cut[0] = None
            batch = _read(pipe, key)
            if batch is None or not batch.is_abandoned(time.time(), for_s=CUT_SHORT_AFTER_S):
                return
            missing = batch.jobs - batch.stored
            pipe.multi()
            cut_short = "1" if missing else "0"  # all stored, only not marked so: not cut
            pipe.hset(
                key,
                mapping={"storer": "", "storing_until": "null", "cut_short": cut_short},
            )
            pipe.hincrby(key, "jobs", -missing)
            pipe.hincrby(key, "pending", -missing)
            cut[0] = replace(
                batch,
                storer=None,
                storing_until=None,
                cut_short=missing > 0,
                jobs=batch.stored,
                pending=batch.pending - missing,
            )

        self.redis.transaction(transaction, key)
        if cut[0] is not None and cut[0].pending <= 0:
            return self.finish_if_done(batch_id) or cut[0]
        return cut[0]

    def get(self, batch_id: str, *, settle: bool = True) -> Batch | None:
        """The batch; with ``settle``, one its storer abandoned is cut short first, and one with
        nothing pending is finished (module doc)."""
        raw = self.redis.hgetall(batch_key(batch_id))
        batch = Batch.from_hash(raw) if raw else None  # type: ignore[arg-type]
        if not settle or batch is None:
            return batch
        return self._settled(batch)

    def _settled(self, batch: Batch) -> Batch | None:
        """``batch`` as read, cut short if its storer abandoned it and finished if nothing is
        pending (module doc); re-read only when one of those wrote."""
        if batch.is_abandoned(time.time(), for_s=CUT_SHORT_AFTER_S):
            batch = self.cut_short_if_abandoned(batch.id) or self.get(batch.id)  # type: ignore[assignment]
            if batch is None:
                return None
        if not batch.stored_status.is_terminal and batch.pending <= 0:
            # Its last job's process died before it finished the batch (module doc, step 3).
            batch = self.finish_if_done(batch.id) or batch
        return batch

    def settle_due(self, now: float, *, limit: int = 100) -> int:
        """Look at the unsettled batches whose look is due (module doc): cut short one its
        storer abandoned, finish one with nothing pending, forget one that is terminal or gone,
        and look at the others again ``RECHECK_S`` later. How many this call cut short or
        finished. Safe in any number of reapers at once (each step is its own transaction)."""
        index = unsettled_batches_key()
        settled = 0
        due: list[bytes] = self.redis.zrangebyscore(index, "-inf", now, start=0, num=limit)  # type: ignore[assignment]
        for raw in due:
            batch_id = raw.decode()
            before = self.get(batch_id, settle=False)
            after = self._settled(before) if before is not None else None
            if after is None or after.stored_status.is_terminal:
                self.redis.zrem(index, batch_id)
            else:
                self.redis.zadd(index, {batch_id: now + RECHECK_S}, xx=True)
            if before is not None and after is not None and _settled(before, after):
                settled += 1
        return settled

    def lines(self, batch_id: str, start: int, count: int) -> list[str]:
        found = self.redis.lrange(batch_lines_key(batch_id), start, start + count - 1)
        return [item.decode() for item in found]  # type: ignore[union-attr]

    def request_cancel(self, batch_id: str) -> Batch | None:
        """Mark the batch as asked to cancel (its jobs are canceled by the caller, one by one);
        the batch as it is now, or None if it is gone."""
        key = batch_key(batch_id)
        found: list[Batch | None] = [None]

        def transaction(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hgetall(key)
            batch = Batch.from_hash(raw) if raw else None  # type: ignore[arg-type]
            found[0] = batch
            if batch is None or batch.stored_status.is_terminal or batch.cancel_requested_at:
                return
            asked = time.time()
            found[0] = replace(batch, cancel_requested_at=asked)
            pipe.multi()
            pipe.hset(key, "cancel_requested_at", json.dumps(asked))

        self.redis.transaction(transaction, key)
        return found[0]

    def finish_if_done(self, batch_id: str) -> Batch | None:
        return finish_if_done(self.redis, batch_id, self.retention_s, self.event_ttl_s)


class StorerSuperseded(Exception):
    """Another storer took the batch over (this one was presumed dead): stop writing."""


@dataclass(frozen=True)
class BatchFence:
    """What a storer's chunk transactions check and write (module doc)."""

    batch_id: str
    token: str

    @property
    def key(self) -> str:
        return batch_key(self.batch_id)

    def check(self, pipe: redis.client.Pipeline) -> None:
        """Under WATCH of ``key``: ``StorerSuperseded`` unless this storer still holds it (one
        field read: a chunk's check must not read the record's inline errors each time)."""
        if pipe.hget(self.key, "storer") != self.token.encode():
            raise StorerSuperseded(f"batch {self.batch_id} is stored by another request now")

    def stage_stored(self, pipe: redis.client.Pipeline, count: int) -> None:
        """Inside a chunk's MULTI: ``count`` more jobs stored, and the lease renewed."""
        pipe.hincrby(self.key, "stored", count)
        pipe.hset(self.key, "storing_until", json.dumps(time.time() + STORING_LEASE_S))


def _settled(before: Batch, after: Batch) -> bool:
    """Whether a look changed the batch: cut it short, or finished it."""
    was_terminal = before.stored_status.is_terminal
    return after.cut_short != before.cut_short or (
        after.stored_status.is_terminal and not was_terminal
    )


def _read(pipe: redis.client.Pipeline, key: str) -> Batch | None:
    raw = pipe.hgetall(key)
    return Batch.from_hash(raw) if raw else None  # type: ignore[arg-type]


def cancel_requested(client: redis.Redis, batch_id: str) -> bool:
    """Whether the batch was asked to cancel: a worker about to start one of its jobs cancels
    the job instead (``JobStore.claim``), so that nothing starts once a cancel is asked."""
    return client.hget(batch_key(batch_id), "cancel_requested_at") not in (None, b"null")


def stage_job_started(pipe: redis.client.Pipeline, job: Job) -> None:
    """Inside the MULTI that starts a batch's job: the batch is running from the first start."""
    pipe.hsetnx(batch_key(job.batch_id), "started_at", json.dumps(time.time()))


def stage_job_finished(pipe: redis.client.Pipeline, job: Job, retention_s: int) -> None:
    """Inside the MULTI that stores a batch's job as terminal: count it (module doc, step 1).

    Queued last, so that the transaction's last reply is the batch's ``pending`` after it. The
    batch and its lines are kept the retention time after its latest job finished, like a job.
    """
    assert job.status.is_terminal and job.batch_id
    key = batch_key(job.batch_id)
    pipe.hincrby(key, job.status.value, 1)
    pipe.expire(batch_lines_key(job.batch_id), retention_s)
    pipe.expire(key, retention_s)
    pipe.hincrby(key, "pending", -1)


def finish_if_done(
    client: redis.Redis, batch_id: str, retention_s: int, event_ttl_s: float
) -> Batch | None:
    """Make a batch with nothing pending terminal and stage its webhook (module doc, step 2);
    the batch so finished, or None if this call did not finish it."""
    key = batch_key(batch_id)
    finished: list[Batch | None] = [None]

    def transaction(pipe: redis.client.Pipeline) -> None:
        finished[0] = None
        raw = pipe.hgetall(key)
        batch = Batch.from_hash(raw) if raw else None  # type: ignore[arg-type]
        if batch is None or batch.stored_status.is_terminal or batch.pending > 0:
            return
        now = time.time()
        status = BatchStatus.CANCELED if batch.cancel_requested_at else BatchStatus.COMPLETED
        done = replace(
            batch,
            stored_status=status,
            finished_at=now,
            expires_at=now + retention_s,
            storer=None,
            storing_until=None,
        )
        pipe.multi()
        pipe.hset(
            key,
            mapping={
                "status": status.value,
                "finished_at": json.dumps(now),
                "expires_at": repr(done.expires_at),
                # Nothing pending: every job was stored, even if its storer died before it said
                # so (the reaper sent their messages before a retry came).
                "storer": "",
                "storing_until": "null",
            },
        )
        pipe.expire(key, retention_s)
        pipe.expire(batch_lines_key(batch_id), retention_s)
        pipe.zrem(unsettled_batches_key(), batch_id)
        _stage_event(pipe, done, now, event_ttl_s)
        finished[0] = done

    client.transaction(transaction, key)
    return finished[0]


def _stage_event(pipe: redis.client.Pipeline, batch: Batch, now: float, ttl_s: float) -> None:
    if not batch.webhook_url:
        return
    kind = f"batch.{batch.status.value}"
    payload = {"type": kind, "timestamp": iso8601(now), "data": batch.to_public()}
    event = webhook_events.WebhookEvent(
        id=f"msg_{uuid.uuid4().hex}",
        # The outbox keys a delivery log (and a 410) by this id: the batch's, for its events.
        job_id=batch.id,
        type=kind,
        url=batch.webhook_url,
        body=json.dumps(payload, separators=(",", ":")),
        created_at=now,
    )
    webhook_events.stage(pipe, event, ttl_s=ttl_s)


def is_job_id(entry: str) -> bool:
    """Whether a lines-list entry is a job id (else it is a line's error, as JSON)."""
    return not entry.startswith("{")
