"""The batching engine in-process on the tiny checkpoint (CPU, fp32): batched answers are exactly
the one-at-a-time answers; deadlines, cancellation and out-of-memory splitting."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from internvl_queue.worker.engine import (
    Engine,
    EngineConfig,
    EngineDead,
    EngineRequest,
    InvalidRequest,
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


class FakeDecoder:
    """The real decoder behind a fake GPU edge: subclasses say how ``run`` fails."""

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder
        self.batch_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.decoder, name)

    def run(self, batch: Any, *args: Any) -> Any:
        self.batch_sizes.append(len(batch))
        return self.decoder.run(batch, *args)


class OomAboveBatchSize(FakeDecoder):
    """Out of memory (``error``) above ``limit`` jobs, and always for a job with more than
    ``tile_limit`` tiles."""

    def __init__(self, decoder: Any, limit: int, tile_limit: int, error: Exception) -> None:
        super().__init__(decoder)
        self.limit, self.tile_limit, self.error = limit, tile_limit, error

    def run(self, batch: Any, *args: Any) -> Any:
        if len(batch) > self.limit or any(r.tiles > self.tile_limit for r in batch):
            self.batch_sizes.append(len(batch))
            raise self.error
        return super().run(batch, *args)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory (fake)"),
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 34359738368 bytes"
        ),
    ],
    ids=["cuda", "python-host", "torch-host"],
)
def test_out_of_memory_splits_the_batch_and_a_job_too_big_alone_fails(
    loaded: LoadedModel, make_engine: Any, error: Exception
) -> None:
    engine = make_engine(max_wait_ms=200, group_by_length=False)
    fake = OomAboveBatchSize(engine.decoder, limit=2, tile_limit=12, error=error)
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


class FailsOnPoison(FakeDecoder):
    """Any batch holding the ``poison`` request raises, as a bad input would (not memory)."""

    def __init__(self, decoder: Any, poison: EngineRequest) -> None:
        super().__init__(decoder)
        self.poison = poison

    def run(self, batch: Any, *args: Any) -> Any:
        if any(r is self.poison for r in batch):
            self.batch_sizes.append(len(batch))
            raise ValueError("this input breaks the model (fake)")
        return super().run(batch, *args)


def test_one_poison_request_fails_alone_and_its_seven_batch_mates_succeed(
    loaded: LoadedModel, make_engine: Any
) -> None:
    engine = make_engine(max_wait_ms=300, group_by_length=False)
    jobs = [(photo(40 + 8 * i, 48, seed=300 + i), f"Question {i}?", 4 + i) for i in range(8)]
    requests = [_request(loaded, img, q, max_new_tokens=n, max_tiles=2) for img, q, n in jobs]
    poison = requests[5]
    fake = FailsOnPoison(engine.decoder, poison)
    engine.decoder = fake
    for request in requests:
        engine.submit(request)
    engine.start()
    results = [r.future.result(timeout=120) for r in requests]
    assert fake.batch_sizes[0] == 8  # they were one batch, which was split down to the poison
    for (img, q, n), request, result in zip(jobs, requests, results, strict=True):
        if request is poison:
            assert result.stop is StopReason.ERROR
            assert result.error == "ValueError: this input breaks the model (fake)"
        else:
            assert result.stop in (StopReason.EOS, StopReason.LENGTH), result
            assert result.tokens == _one_at_a_time(loaded, img, q, max_new_tokens=n, max_tiles=2)
    assert engine.stats.snapshot()["error_splits"] >= 3  # 8 -> 4 -> 2 -> 1
    assert not engine.dead


class RaisesStickyCudaError(FakeDecoder):
    """The GPU after an illegal memory access: every batch from the ``after``-th on raises."""

    def __init__(self, decoder: Any, after: int) -> None:
        super().__init__(decoder)
        self.after = after

    def run(self, batch: Any, *args: Any) -> Any:
        if len(self.batch_sizes) >= self.after:
            self.batch_sizes.append(len(batch))
            raise RuntimeError(
                "CUDA error: an illegal memory access was encountered\n"
                "CUDA kernel errors might be asynchronously reported at some other API call"
            )
        return super().run(batch, *args)


class HangsForever(FakeDecoder):
    """A hung GPU: the ``after``-th batch never returns (until the test releases it)."""

    def __init__(self, decoder: Any, after: int) -> None:
        super().__init__(decoder)
        self.after = after
        self.release = threading.Event()

    def run(self, batch: Any, *args: Any) -> Any:
        if len(self.batch_sizes) >= self.after:
            self.batch_sizes.append(len(batch))
            self.release.wait(60)
            raise RuntimeError("released by the test")
        return super().run(batch, *args)


@pytest.mark.parametrize("fault", ["sticky_cuda_error", "hang"])
def test_a_dead_gpu_hands_every_held_request_back_and_takes_no_more(
    loaded: LoadedModel, fault: str
) -> None:
    deaths: list[str] = []
    engine = Engine(
        loaded,
        EngineConfig(max_wait_ms=50, max_batch_jobs=2, group_by_length=False, stall_s=1.0),
        on_dead=deaths.append,
    )
    fake: Any = (
        RaisesStickyCudaError(engine.decoder, after=1)
        if fault == "sticky_cuda_error"
        else HangsForever(engine.decoder, after=1)
    )
    engine.decoder = fake
    try:
        requests = [
            engine.submit(
                _request(loaded, photo(40, 40, seed=i), f"q{i}", max_new_tokens=3, max_tiles=1)
            )
            for i in range(6)
        ]
        engine.start()
        outcomes: list[str] = []
        for request in requests:
            try:
                outcomes.append(request.future.result(timeout=30).stop.value)
            except EngineDead:
                outcomes.append("handed back")
        # The first batch (2 jobs) was answered; the batch the GPU died in and everything
        # waiting were handed back, each exactly once (a future resolves once).
        assert outcomes[:2] != ["handed back"] * 2
        assert all(o in ("eos", "length") for o in outcomes[:2]), outcomes
        assert outcomes[2:] == ["handed back"] * 4
        assert len(deaths) == 1 and engine.dead == deaths[0]
        expected = "illegal memory access" if fault == "sticky_cuda_error" else "no progress"
        assert expected in deaths[0]
        with pytest.raises(EngineDead):
            engine.submit(_request(loaded, photo(40, 40), "late", max_new_tokens=3, max_tiles=1))
        assert fake.batch_sizes[1:] == [2]  # the dead engine ran nothing more
    finally:
        if isinstance(fake, HangsForever):
            fake.release.set()
        engine.stop()


def test_waiting_requests_hold_no_device_memory_beyond_the_budget(
    loaded: LoadedModel, make_engine: Any
) -> None:
    engine = make_engine(max_batch_tiles=4, max_resident_tiles=8, max_wait_ms=0)
    hold = threading.Event()

    class Slow(FakeDecoder):
        def run(self, batch: Any, *args: Any) -> Any:
            hold.wait(30)
            return super().run(batch, *args)

    engine.decoder = Slow(engine.decoder)
    requests = [
        engine.submit(_request(loaded, photo(96, 64, seed=i), "q", max_new_tokens=2, max_tiles=2))
        for i in range(20)
    ]
    assert {r.tiles for r in requests} == {3}  # 2 tiles + the thumbnail
    engine.start()
    time.sleep(1.0)  # the first batch runs (held); the uploader admits what the budget allows
    resident = [r for r in requests if r.device_pixels is not None]
    assert 0 < engine.resident_tiles <= 8
    assert sum(r.tiles for r in resident) == engine.resident_tiles
    assert len(resident) < len(requests)
    hold.set()
    results = [r.future.result(timeout=120) for r in requests]
    assert all(r.stop in (StopReason.EOS, StopReason.LENGTH) for r in results)
    assert engine.resident_tiles == 0
    assert all(r.device_pixels is None for r in requests)  # resolved: nothing left on the device


def test_a_request_whose_image_tokens_do_not_match_its_tiles_is_refused_at_the_door(
    loaded: LoadedModel, make_engine: Any
) -> None:
    engine = make_engine()
    request = _request(loaded, photo(40, 40), "q", max_new_tokens=3, max_tiles=1)
    request.input_ids = request.input_ids[request.input_ids != engine.decoder.image_token_id]
    with pytest.raises(InvalidRequest, match="image tokens"):
        engine.submit(request)


def test_prepared_decode_shapes_share_one_kv_buffer_without_autograd_history(
    loaded: LoadedModel, make_engine: Any
) -> None:
    """With CUDA graphs, start-up builds every planned shape, views of one KV buffer, and runs a
    decode step in each to capture it. Here on the CPU, each "capture" runs that step without
    CUDA. It must run in inference mode (a KV buffer with autograd history keeps every step's
    activations alive: 53 GiB on an H200), and answers through the shared buffer stay exact."""
    engine = make_engine(max_wait_ms=200, group_by_length=False)
    decoder = engine.decoder
    decoder.use_graphs = True
    captured: list[tuple[int, int]] = []

    def capture_without_cuda(ws: Any) -> None:
        ws.done.fill_(True)
        ws.limit.fill_(1)
        ws.cache.write_index = ws.write_pos
        decoder._decode_step(ws)
        captured.append((ws.rows, ws.slots))

    decoder._capture = capture_without_cuda
    requests = [
        engine.submit(_request(loaded, img, q, max_new_tokens=n, max_tiles=t))
        for img, q, n, t in JOBS
    ]
    engine.start()
    assert captured == list(decoder.plan.shapes) and len(captured) > 10
    pool = decoder._pools
    assert pool.row_slots == decoder.plan.kv_budget
    assert all(t.is_inference() and t.grad_fn is None for t in (*pool.keys, *pool.values))
    assert engine.stats.snapshot()["decode_shapes"] == len(captured)
    results = [r.future.result(timeout=120) for r in requests]
    assert [r.batch_size for r in results] == [len(JOBS)] * len(JOBS)  # one batch, mixed tiles
    for (img, q, n, t), result in zip(JOBS, results, strict=True):
        assert result.tokens == _one_at_a_time(loaded, img, q, max_new_tokens=n, max_tiles=t)
    assert len(captured) == len(decoder.plan.shapes)  # nothing built or captured while serving
    assert engine.stats.snapshot()["uncaptured_batches"] == 0


def test_a_decoder_whose_layers_sit_on_two_devices_answers_as_on_one(
    loaded: LoadedModel, make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code path of a model split across GPUs (device_map.py), on the CPU: the second half of
    the layers is said to be on another device, so that each step's inputs are moved at the
    boundary and the KV cache is allocated per layer's device. The tokens are those of the whole
    model on one device."""
    jobs = [JOBS[0], JOBS[3], JOBS[5]]

    def answers(engine: Engine) -> list[list[int]]:
        requests = [
            engine.submit(_request(loaded, img, q, max_new_tokens=n, max_tiles=t))
            for img, q, n, t in jobs
        ]
        engine.start()
        return [r.future.result(timeout=120).tokens for r in requests]

    whole = answers(make_engine(max_wait_ms=200, group_by_length=False))
    split = make_engine(max_wait_ms=200, group_by_length=False)
    decoder = split.decoder
    assert not decoder.sharded and decoder.layer_devices == [torch.device("cpu")] * 2
    other = torch.device("cpu", 1)  # a second device index: its tensors stay on the CPU
    decoder.layer_devices = [torch.device("cpu"), other]
    decoder.sharded = True
    moves: list[torch.device] = []
    original_to = torch.Tensor.to

    def counting_to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args and args[0] == other:
            moves.append(args[0])
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    assert answers(split) == whole
    monkeypatch.undo()
    # Per forward (a prefill, then each decode step) five tensors cross at the boundary: hidden,
    # mask, positions, cos and sin.
    assert moves and len(moves) % 5 == 0
    assert not decoder.use_graphs
