"""A queued job's place in the queue: how many queued jobs its workers take before it, plus one.

A queue's workers take its lanes in order, the highest first (``core/priority.py``), and each
lane by submission time. So a job's place counts every queued job of the lanes above its own in
the same queue (``INTERNVL_QUEUE``), then those of its own lane submitted before it; jobs of
other queues, and of the lanes below, do not count. Each lane is a sorted set of its queued jobs
(``keys.queued_lane_key``), kept by the store in the transactions that move a job in or out of
``queued``. A job queued before those sets existed is in none: it is ranked among all queued
jobs instead (``keys.queued_key``), as before.

Still approximate: the broker may hand out a redelivered message out of order, and a worker may
hold messages it has taken but not started.
"""

from __future__ import annotations

from typing import Any

import redis

from .keys import queued_key, queued_lane_key
from .priority import Priority

__all__ = ["queue_positions", "stage_lane_cleanup"]

_LANES = sorted(Priority, key=lambda p: p.rank)  # the highest first


def queue_positions(client: redis.Redis, jobs: list[tuple[str, str, Priority]]) -> dict[str, int]:
    """Each queued job's place, by id, for ``(job id, queue, priority)``; a job no longer queued
    is left out. One round trip."""
    if not jobs:
        return {}
    pipe = client.pipeline(transaction=False)
    for job_id, queue, priority in jobs:
        for lane in _LANES:
            pipe.zcard(queued_lane_key(queue, lane.value))
        pipe.zrank(queued_lane_key(queue, priority.value), job_id)
        pipe.zrank(queued_key(), job_id)
    replies = pipe.execute()
    width = len(_LANES) + 2
    found: dict[str, int] = {}
    for index, (job_id, _, priority) in enumerate(jobs):
        *sizes, in_lane, overall = replies[index * width : (index + 1) * width]
        place = _place(priority, sizes, in_lane, overall)
        if place is not None:
            found[job_id] = place
    return found


def _place(priority: Priority, sizes: list[Any], in_lane: Any, overall: Any) -> int | None:
    if in_lane is not None:
        above = sum(
            int(size) for lane, size in zip(_LANES, sizes, strict=True) if lane.rank < priority.rank
        )
        return above + int(in_lane) + 1
    return None if overall is None else int(overall) + 1


def stage_lane_cleanup(pipe: redis.client.Pipeline, queue: str, oldest: float) -> None:
    """Inside a MULTI: drop from ``queue``'s lanes the entries of jobs created before ``oldest``
    (their records expired while queued: no worker came), as the store does for ``queued_key``."""
    for lane in _LANES:
        pipe.zremrangebyscore(queued_lane_key(queue, lane.value), "-inf", oldest)
