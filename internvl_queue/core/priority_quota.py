"""How much of the high lane one API key may hold: ``INTERNVL_MAX_HIGH_PER_KEY`` high-priority jobs
queued or running at once (0: no limit).

Without it, a key that marks everything ``high`` turns the lane into the normal one and starves
every other key's normal and low work. Counted from the jobs themselves, not from a counter the
state changes keep: each owner has a sorted set of its high jobs' ids (``high_jobs_key``), added
at submit; a submit that finds the set full drops the ids of jobs that ended or expired (their
statuses read in one round trip) before it counts. Nothing on a job's way to a terminal state has
to remember the quota, and a crash anywhere cannot leak a slot.

Checked, then added: concurrent submits of one key may go a few over, as with the queue cap.
"""

from __future__ import annotations

import redis

from .errors import ServiceUnavailable, TooManyRequests
from .job import Job
from .keys import high_jobs_key
from .priority import Priority
from .store import JobStore

__all__ = ["HighPriorityQuota"]


class HighPriorityQuota:
    def __init__(self, store: JobStore, limit: int, *, keep_s: int) -> None:
        self.store = store
        self.limit = limit
        # A job lives at most its deadline (INTERNVL_MAX_TIMEOUT_S) before it ends: an owner's set
        # untouched for longer holds only ended jobs, and may go.
        self.keep_s = keep_s

    def check(self, owner: str, priority: Priority) -> None:
        """Raise ``TooManyRequests`` (``priority_quota_exceeded``) if ``owner`` may not add a
        job of ``priority`` now."""
        if priority is not Priority.HIGH or self.limit <= 0:
            return
        key = high_jobs_key(owner)
        try:
            ids = [raw.decode() for raw in self.store.redis.zrange(key, 0, -1)]  # type: ignore[union-attr]
            if len(ids) < self.limit:  # some may have ended: under the limit all the same
                return
            states = self.store.dispatch_states(ids)
            ended = [
                job_id
                for job_id, state in zip(ids, states, strict=True)
                if state is None or state.status.is_terminal
            ]
            if ended:
                self.store.redis.zrem(key, *ended)
        except redis.RedisError as exc:
            raise ServiceUnavailable("the job store is unavailable; try again") from exc
        active = len(ids) - len(ended)
        if active >= self.limit:
            raise TooManyRequests(
                f"this API key already has {active} high-priority jobs queued or running, the "
                f"most it may have (INTERNVL_MAX_HIGH_PER_KEY={self.limit}): wait for one to "
                "finish, or submit this job with priority normal or low",
                code="priority_quota_exceeded",
            )

    def add(self, owner: str, job: Job) -> None:
        """Count ``job`` (stored) against its owner's quota, if it is a high one."""
        if job.priority is not Priority.HIGH or self.limit <= 0:
            return
        key = high_jobs_key(owner)
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.zadd(key, {job.id: job.created_at})
        pipe.expire(key, self.keep_s)
        pipe.execute()
