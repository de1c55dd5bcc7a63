"""Choosing the next batch from the waiting requests: a pure function, no threads, no GPU."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

from .config import EngineConfig
from .request import EngineRequest

__all__ = ["length_bucket", "select_batch"]


def length_bucket(max_new_tokens: int) -> int:
    """Power-of-two bucket of a job's max_new_tokens (16 -> 4, 17..32 -> 5, ...)."""
    return max(0, (max_new_tokens - 1).bit_length())


def select_batch(waiting: Sequence[EngineRequest], config: EngineConfig) -> list[EngineRequest]:
    """The oldest request and as many followers as fit (in arrival order).

    Followers must share the oldest one's length bucket when grouping by length; a request that
    alone exceeds the tile budget still runs, alone.
    """
    if not waiting:
        return []
    head = waiting[0]
    chosen = [head]
    tiles = head.tiles
    bucket = length_bucket(head.max_new_tokens)
    for request in islice(waiting, 1, None):
        if len(chosen) >= config.max_batch_jobs:
            break
        if config.group_by_length and length_bucket(request.max_new_tokens) != bucket:
            continue
        if tiles + request.tiles > config.max_batch_tiles:
            continue
        chosen.append(request)
        tiles += request.tiles
    return chosen
