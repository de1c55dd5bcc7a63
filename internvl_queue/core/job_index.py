"""Each API key's jobs, newest first: the index ``GET /v1/jobs`` reads, and how a page is read.

The index is one sorted set per owner (``owner_jobs_key``): job id -> ``created_at``. Its entry
is written by ``JobStore.create`` in the transaction that stores the job (``stage_entry``), so
every stored job is listed and no listed job was never stored.

Entries leave in three ways, none of which a reader can tell from the others' absence:

1. a page that meets an entry whose record is gone (it expired) removes it;
2. each new job trims its owner's entries older than twice the retention time: no record lives
   longer (it expires the retention time after submission, or after it finished, and it
   finishes before it expires);
3. the whole set expires as long after its owner's latest job.

A page is read in passes over the entries below its position (``job_listing.Position``):

1. take the next entries (one more than needed, to know whether there are more);
2. read each one's status and owner (``HMGET``, one round trip for the pass); drop the gone
   ones from the index, skip those the status filter excludes;
3. stop once the page is full or ``scan_limit`` entries were looked at; read the chosen
   records whole (one round trip). The cursor then names the last entry looked at, so a
   filter that matches few jobs costs bounded work per request, and the caller continues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from .job import Job
from .job_listing import ListQuery, Position
from .keys import job_key, owner_jobs_key
from .queue_position import queue_positions
from .status import JobStatus

__all__ = ["MAX_SCANNED", "JobIndex", "JobPage", "created_floor", "stage_entry"]

# Index entries one page looks at, at most: with a status filter that matches few of a key's
# jobs, a page ends early (maybe empty) and its cursor goes on from there.
MAX_SCANNED = 1000
# Entries read per pass when a status filter may skip many of them.
_FILTERED_PASS = 200

Entry = tuple[str, float]  # job id, created_at


def stage_entry(pipe: redis.client.Pipeline, job: Job, retention_s: float) -> None:
    """Add ``job`` to its owner's index in the transaction ``pipe`` (see the module's doc)."""
    key = owner_jobs_key(job.owner)
    lifetime = 2 * retention_s
    pipe.zadd(key, {job.id: job.created_at})
    pipe.zremrangebyscore(key, "-inf", f"({job.created_at - lifetime!r}")
    pipe.expire(key, int(lifetime) + 1)


def created_floor(created_after: float) -> float:
    """The earliest ``created_at`` listed for ``created_after``: a job is listed when the time
    the API shows for it, to the millisecond, is later. So passing back the ``created_at`` of
    the newest job seen lists only newer ones, though the stored time has microseconds."""
    shown_ms = math.floor(created_after * 1000)
    # The API rounds to microseconds before it cuts to milliseconds (``job.iso8601``).
    return (shown_ms + 1) / 1000 - 0.5e-6


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    # Queued jobs' places in the queue (``JobStore.queue_position``), by job id.
    queue_positions: dict[str, int]
    # Where the next page starts; None: the walk is over.
    next: Position | None


class JobIndex:
    def __init__(self, client: redis.Redis, *, scan_limit: int = MAX_SCANNED) -> None:
        self.redis = client
        self.scan_limit = scan_limit

    def page(self, owner: str, query: ListQuery) -> JobPage:
        key = owner_jobs_key(owner)
        floor = None if query.created_after is None else created_floor(query.created_after)
        position = query.after
        chosen: list[str] = []
        scanned = 0
        more = True
        while more and len(chosen) < query.limit and scanned < self.scan_limit:
            want = query.limit - len(chosen)
            size = want if query.statuses is None else max(want, _FILTERED_PASS)
            size = min(size, self.scan_limit - scanned)
            entries = self._entries_below(key, position, floor, size + 1)
            more = len(entries) > size
            batch = entries[:size]
            states = self._states(key, owner, [job_id for job_id, _ in batch])
            for index, ((job_id, created_at), status) in enumerate(zip(batch, states, strict=True)):
                scanned += 1
                position = Position(created_at, job_id)
                if status is not None and (query.statuses is None or status in query.statuses):
                    chosen.append(job_id)
                    if len(chosen) == query.limit:
                        more = more or index < len(batch) - 1
                        break
        jobs = self._records(chosen)
        return JobPage(jobs, self._queue_positions(jobs), position if more else None)

    def _entries_below(
        self, key: str, position: Position | None, floor: float | None, count: int
    ) -> list[Entry]:
        """Up to ``count`` entries after ``position`` (newest first), created at ``floor`` or
        later."""
        lowest = "-inf" if floor is None else repr(floor)
        if position is None:
            found: list[tuple[bytes, float]] = self.redis.zrevrangebyscore(  # type: ignore[assignment]
                key, "+inf", lowest, start=0, num=count, withscores=True
            )
            return [(_text(job_id), score) for job_id, score in found]
        score = repr(position.created_at)
        pipe = self.redis.pipeline(transaction=False)
        # Jobs created at the very same moment are ordered by id, descending (as ZREVRANGE
        # orders them): those after the position are the ones with a smaller id.
        pipe.zrangebyscore(key, score, score)
        pipe.zrevrangebyscore(key, f"({score}", lowest, start=0, num=count, withscores=True)
        same, older = pipe.execute()
        above_floor = floor is None or position.created_at >= floor
        ties = sorted(
            (job_id for job_id in map(_text, same) if above_floor and job_id < position.job_id),
            reverse=True,
        )
        entries = [(job_id, position.created_at) for job_id in ties]
        entries += [(_text(job_id), created_at) for job_id, created_at in older]
        return entries[:count]

    def _states(self, key: str, owner: str, job_ids: list[str]) -> list[JobStatus | None]:
        """Each job's status (None: gone, or not ``owner``'s); the gone ones leave the index."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(job_key(job_id), "status", "owner")
        states: list[JobStatus | None] = []
        gone: list[str] = []
        for job_id, (status, found_owner) in zip(job_ids, pipe.execute(), strict=True):
            if status is None:
                gone.append(job_id)
            states.append(
                JobStatus(status.decode())
                if status is not None and _text(found_owner or b"") == owner
                else None
            )
        if gone:
            self.redis.zrem(key, *gone)
        return states

    def _records(self, job_ids: list[str]) -> list[Job]:
        """The records of ``job_ids``, in order, less any that expired since they were chosen."""
        if not job_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(job_key(job_id))
        return [Job.from_hash(raw) for raw in pipe.execute() if raw]

    def _queue_positions(self, jobs: list[Job]) -> dict[str, int]:
        queued = [(j.id, j.queue, j.priority) for j in jobs if j.status is JobStatus.QUEUED]
        return queue_positions(self.redis, queued)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
