"""The batching engine in-process on the tiny checkpoint (CPU, fp32): batched answers are exactly
the one-at-a-time answers; deadlines, cancellation and out-of-memory splitting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from internvl_queue.worker.engine import (
    Engine,
    EngineConfig,
    EngineRequest,
    StopReason,
    make_request,
)
from internvl_queue.worker.engine.preprocess import prepare
from internvl_queue.worker.model import LoadedModel, load_model
from tests.images import photo
from tests.worker.reference import reference_tokens


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> LoadedModel:
    return load_model(str(tiny_model_dir), "cpu")


@pytest.fixture
def make_engine(loaded: LoadedModel) -> Iterator[Any]:
    engines: list[Engine] = []

    def make(**config: Any) -> Engine:
        engine = Engine(loaded, EngineConfig(**config))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def _request(
    loaded: LoadedModel, image: bytes, question: str, *, max_tiles: int, **kw: Any
) -> EngineRequest:
    prepared = prepare(
        loaded.processor,
        [image],
        question,
        max_tiles=max_tiles,
        dtype=loaded.dtype,
        max_pixels=10**8,
    )
    return make_request(prepared, **kw)


def _one_at_a_time(
    loaded: LoadedModel, image: bytes, question: str, *, max_new_tokens: int, max_tiles: int
) -> list[int]:
    """The reference: transformers' generate on this job alone (tests/worker/reference.py)."""
    tokens, _ = reference_tokens(
        Path(loaded.model_id),
        [image],
        question,
        max_new_tokens=max_new_tokens,
        max_tiles=max_tiles,
    )
    return tokens


JOBS = [  # (image, question, max_new_tokens, max_tiles): mixed sizes, tile counts and lengths
    (photo(48, 48, seed=1), "What is it?", 5, 12),
    (photo(896, 672, seed=2), "Describe the scene in detail.", 40, 12),
    (photo(896, 672, seed=2), "Describe the scene in detail.", 40, 1),
    (photo(300, 900, seed=3), "Is there text?", 17, 6),
    (photo(640, 480, seed=4), "Colour?", 1, 3),
    (photo(100, 60, seed=5), "How many objects are visible in this picture, roughly?", 64, 12),
]


def test_batched_tokens_equal_one_at_a_time(loaded: LoadedModel, make_engine: Any) -> None:
    engine = make_engine(max_wait_ms=200, group_by_length=False)
    requests = [
        engine.submit(_request(loaded, img, q, max_new_tokens=n, max_tiles=t))
        for img, q, n, t in JOBS
    ]
    engine.start()
    results = [r.future.result(timeout=120) for r in requests]
    assert [r.batch_size for r in results] == [len(JOBS)] * len(JOBS)  # one batch
    assert len({r.tiles for r in requests}) > 2  # really mixed tile counts
    for (img, q, n, t), result in zip(JOBS, results, strict=True):
        expected = _one_at_a_time(loaded, img, q, max_new_tokens=n, max_tiles=t)
        assert result.tokens == expected
        assert result.stop in (StopReason.EOS, StopReason.LENGTH)
    assert engine.stats.snapshot()["largest_batch"] == len(JOBS)


def test_a_job_past_its_deadline_stops_while_its_batch_mates_finish(
    loaded: LoadedModel, make_engine: Any
) -> None:
    engine = make_engine(max_wait_ms=200, group_by_length=False, check_every=4)
    slow = engine.submit(
        _request(
            loaded,
            photo(64, 64, seed=9),
            "Talk forever.",
            max_new_tokens=4000,
            max_tiles=1,
            ignore_eos=True,
            deadline=time.monotonic() + 1.0,
        )
    )
    mates = [
        engine.submit(_request(loaded, img, q, max_new_tokens=n, max_tiles=t))
        for img, q, n, t in JOBS[:3]
    ]
    engine.start()
    result = slow.future.result(timeout=60)
    assert result.stop is StopReason.TIMEOUT
    assert 0 < len(result.tokens) < 4000
    for (img, q, n, t), mate in zip(JOBS[:3], mates, strict=True):
        answer = mate.future.result(timeout=60)
        assert answer.batch_size == 4  # they shared the slow job's batch
        assert answer.tokens == _one_at_a_time(loaded, img, q, max_new_tokens=n, max_tiles=t)


def test_an_expired_job_does_not_run(loaded: LoadedModel, make_engine: Any) -> None:
    engine = make_engine()
    engine.start()
    late = engine.submit(
        _request(
            loaded, photo(40, 40), "q", max_new_tokens=4, max_tiles=1, deadline=time.monotonic() - 1
        )
    )
    result = late.future.result(timeout=30)
    assert (result.stop, result.tokens) == (StopReason.TIMEOUT, [])


def test_cancellation_is_checked_between_decode_steps(
    loaded: LoadedModel, make_engine: Any
) -> None:
    engine = make_engine(check_every=2)
    cancel_at = time.monotonic() + 0.5
    engine.start()
    request = engine.submit(
        _request(
            loaded,
            photo(40, 40),
            "q",
            max_new_tokens=4000,
            max_tiles=1,
            ignore_eos=True,
            is_canceled=lambda: time.monotonic() > cancel_at,
        )
    )
    result = request.future.result(timeout=60)
    assert result.stop is StopReason.CANCELED
    assert 0 < len(result.tokens) < 4000


class OomAboveBatchSize:
    """A named fake for the GPU edge: the real decoder, but out of memory above ``limit`` jobs,
    and always for a job with more than ``tile_limit`` tiles."""

    def __init__(self, decoder: Any, limit: int, tile_limit: int) -> None:
        self.decoder, self.limit, self.tile_limit = decoder, limit, tile_limit
        self.batch_sizes: list[int] = []

    def run(self, batch: Any, *args: Any) -> Any:
        self.batch_sizes.append(len(batch))
        if len(batch) > self.limit or any(r.tiles > self.tile_limit for r in batch):
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return self.decoder.run(batch, *args)

    def release_memory(self) -> None:
        self.decoder.release_memory()


def test_out_of_memory_splits_the_batch_and_a_job_too_big_alone_fails(
    loaded: LoadedModel, make_engine: Any
) -> None:
    engine = make_engine(max_wait_ms=200, group_by_length=False)
    fake = OomAboveBatchSize(engine.decoder, limit=2, tile_limit=12)
    engine.decoder = fake
    requests = [
        engine.submit(_request(loaded, img, q, max_new_tokens=n, max_tiles=t))
        for img, q, n, t in JOBS[:5]
    ]
    engine.start()
    results = [r.future.result(timeout=120) for r in requests]
    # 5 -> halves (2 + 3) -> ... until each part fits; every failed attempt was retried smaller.
    assert fake.batch_sizes[:2] == [5, 2] and len(fake.batch_sizes) > 4
    for (img, q, n, t), request, result in zip(JOBS[:5], requests, results, strict=True):
        if request.tiles > 12:  # the 13-tile job fails alone, the rest are answered
            assert result.stop is StopReason.OUT_OF_MEMORY
        else:
            assert result.tokens == _one_at_a_time(loaded, img, q, max_new_tokens=n, max_tiles=t)
    assert sum(r.stop is StopReason.OUT_OF_MEMORY for r in results) == 1
    assert engine.stats.snapshot()["oom_splits"] > 0
