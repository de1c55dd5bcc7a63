from collections import deque

import torch

from internvl_queue.core.priority import Priority
from internvl_queue.worker.engine.batching import enqueue, length_bucket, select_batch
from internvl_queue.worker.engine.config import EngineConfig
from internvl_queue.worker.engine.request import EngineRequest


def _request(
    tiles: int = 1, max_new_tokens: int = 64, priority: Priority = Priority.NORMAL
) -> EngineRequest:
    return EngineRequest(
        input_ids=torch.zeros(4, dtype=torch.long),
        pixel_values=torch.zeros(tiles, 3, 2, 2),
        max_new_tokens=max_new_tokens,
        priority=priority.rank,
    )


def test_length_buckets() -> None:
    assert [length_bucket(n) for n in (1, 2, 16, 17, 32, 33, 4096)] == [0, 1, 4, 5, 5, 6, 12]


def test_bounded_by_jobs_and_tiles_in_arrival_order() -> None:
    waiting = [_request(tiles=5) for _ in range(10)]
    assert select_batch(waiting, EngineConfig(max_batch_jobs=4)) == waiting[:4]
    assert select_batch(waiting, EngineConfig(max_batch_tiles=12)) == waiting[:2]


def test_an_oversized_job_still_runs_alone() -> None:
    big = _request(tiles=40)
    assert select_batch([big, _request()], EngineConfig(max_batch_tiles=16)) == [big]


def test_grouping_by_length_keeps_short_jobs_together() -> None:
    short1, long1, short2 = (
        _request(max_new_tokens=16),
        _request(max_new_tokens=512),
        _request(max_new_tokens=10),
    )
    grouped = EngineConfig(group_by_length=True)
    assert select_batch([short1, long1, short2], grouped) == [short1, short2]
    assert select_batch([long1, short1], grouped) == [long1]  # the oldest job leads
    mixed = EngineConfig(group_by_length=False)
    assert select_batch([short1, long1, short2], mixed) == [short1, long1, short2]


def test_a_high_request_behind_many_low_ones_leads_the_next_batch() -> None:
    lows = [_request(priority=Priority.LOW) for _ in range(500)]
    high = _request(priority=Priority.HIGH)
    batch = select_batch([*lows, high], EngineConfig(max_batch_jobs=8))
    assert batch == [high, *lows[:7]]  # then the oldest low ones, in arrival order


def test_priorities_fill_a_batch_in_order_then_by_arrival() -> None:
    low, normal1, high1, normal2, high2 = (
        _request(priority=Priority.LOW),
        _request(),
        _request(priority=Priority.HIGH),
        _request(),
        _request(priority=Priority.HIGH),
    )
    waiting = [low, normal1, high1, normal2, high2]
    assert select_batch(waiting, EngineConfig(max_batch_jobs=4)) == [high1, high2, normal1, normal2]
    assert select_batch(waiting, EngineConfig(max_batch_jobs=8)) == [
        high1,
        high2,
        normal1,
        normal2,
        low,
    ]


def test_a_high_request_still_leads_when_its_length_bucket_differs() -> None:
    lows = [_request(max_new_tokens=16, priority=Priority.LOW) for _ in range(3)]
    high = _request(max_new_tokens=512, priority=Priority.HIGH)
    assert select_batch([*lows, high], EngineConfig(group_by_length=True)) == [high]


def test_enqueue_keeps_the_line_by_priority_then_arrival() -> None:
    line: deque[EngineRequest] = deque()
    low1, normal, low2, high1, high2 = (
        _request(priority=Priority.LOW),
        _request(),
        _request(priority=Priority.LOW),
        _request(priority=Priority.HIGH),
        _request(priority=Priority.HIGH),
    )
    for request in (low1, normal, low2, high1, high2):
        enqueue(line, request)
    assert list(line) == [high1, high2, normal, low1, low2]
