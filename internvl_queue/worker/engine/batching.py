"""Choosing the next batch from the waiting requests: a pure function, no threads, no GPU."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from .config import EngineConfig
from .request import EngineRequest

__all__ = ["enqueue", "length_bucket", "select_batch"]


def length_bucket(max_new_tokens: int) -> int:
    """Power-of-two bucket of a job's max_new_tokens (16 -> 4, 17..32 -> 5, ...)."""
    return max(0, (max_new_tokens - 1).bit_length())


def select_batch(waiting: Sequence[EngineRequest], config: EngineConfig) -> list[EngineRequest]:
    """The most urgent request (the oldest of the highest priority) and as many followers as fit,
    taken by priority, then in arrival order.

    A worker holds many messages at once (up to its Celery concurrency): a high job taken behind
    hundreds of low ones must lead the next batch, not wait for them. Followers must share the
    head's length bucket when grouping by length; a request that alone exceeds the tile budget
    still runs, alone.
    """
    if not waiting:
        return []
    # Stable: arrival order within a priority. Timsort is linear on the usual one-priority list.
    ordered = sorted(waiting, key=lambda r: r.priority)
    head = ordered[0]
    chosen = [head]
    tiles = head.tiles
    bucket = length_bucket(head.max_new_tokens)
    for request in ordered[1:]:
        if len(chosen) >= config.max_batch_jobs:
            break
        if config.group_by_length and length_bucket(request.max_new_tokens) != bucket:
            continue
        if tiles + request.tiles > config.max_batch_tiles:
            continue
        chosen.append(request)
        tiles += request.tiles
    return chosen


def enqueue(line: deque[EngineRequest], request: EngineRequest) -> None:
    """Put ``request`` in ``line`` after every request of its priority or a higher one (a lower
    rank), before those of a lower priority: the line stays ordered by priority, then arrival."""
    if not line or line[-1].priority <= request.priority:
        line.append(request)  # the usual case: one priority, or the lowest
        return
    at = next(i for i, queued in enumerate(line) if queued.priority > request.priority)
    line.insert(at, request)
