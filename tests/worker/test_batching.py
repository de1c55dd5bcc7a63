import torch

from internvl_queue.worker.engine.batching import length_bucket, select_batch
from internvl_queue.worker.engine.config import EngineConfig
from internvl_queue.worker.engine.request import EngineRequest


def _request(tiles: int = 1, max_new_tokens: int = 64) -> EngineRequest:
    return EngineRequest(
        input_ids=torch.zeros(4, dtype=torch.long),
        pixel_values=torch.zeros(tiles, 3, 2, 2),
        max_new_tokens=max_new_tokens,
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
