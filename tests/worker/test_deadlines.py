"""A job past its deadline ends ``failed`` with ``timeout`` wherever the deadline passes: queued,
while its input is prepared, waiting for a batch, decoding, or stuck in a batch that does not
stop. The worker runtime with a real Redis, the real engine on the tiny model, and a named fake
at the GPU edge for the decoding cases."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.worker.engine import Engine, EngineConfig, Preprocessor, StopReason
from internvl_queue.worker.engine.decoder import DecodeOutput
from internvl_queue.worker.inference import EngineAnswerer
from internvl_queue.worker.model import LoadedModel, load_model
from internvl_queue.worker.runtime import WorkerRuntime
from tests.images import photo


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> LoadedModel:
    return load_model(str(tiny_model_dir), "cpu")


class DecodesUntilStopped:
    """A slow GPU that honours the engine's stop checks (deadline, cancel) between steps."""

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.decoder, name)

    def run(self, batch: Any, should_stop: Any, check_every: int) -> list[DecodeOutput]:
        stopped: dict[int, StopReason] = {}
        while len(stopped) < len(batch):
            time.sleep(0.02)
            for row in range(len(batch)):
                if row not in stopped and (reason := should_stop(row)) is not None:
                    stopped[row] = reason
        return [DecodeOutput([7], stopped[row]) for row in range(len(batch))]


class IgnoresDeadlines(DecodesUntilStopped):
    """A batch that runs on, deaf to stop checks, for ``seconds``."""

    def __init__(self, decoder: Any, seconds: float) -> None:
        super().__init__(decoder)
        self.seconds = seconds
        self.done = threading.Event()

    def run(self, batch: Any, should_stop: Any, check_every: int) -> list[DecodeOutput]:
        self.done.wait(self.seconds)
        return [DecodeOutput([7], StopReason.LENGTH) for _ in batch]


@pytest.fixture
def runtime(settings: Settings, loaded: LoadedModel) -> Iterator[WorkerRuntime]:
    rt = WorkerRuntime(settings, name="deadline-worker")
    rt.engine = Engine(loaded, EngineConfig(max_wait_ms=1))
    rt.preprocessor = Preprocessor(
        loaded.model_id, loaded.processor, loaded.dtype, processes=0, max_pixels=10**8
    )
    rt.use_model(loaded, EngineAnswerer(loaded, rt.engine, rt.preprocessor, grace_s=0.5))
    rt.engine.start()
    yield rt
    rt.shutdown()


def _job(runtime: WorkerRuntime, timeout_s: int = 1) -> Job:
    job = Job.new("q", JobParams(max_new_tokens=8, max_tiles=1, timeout_s=timeout_s), 1)
    return runtime.store.create(job, [photo(40, 40)])


def _code(runtime: WorkerRuntime, job: Job) -> str:
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.status is JobStatus.FAILED and stored.error
    return stored.error["code"]


def test_timeout_while_queued(runtime: WorkerRuntime) -> None:
    job = _job(runtime)
    time.sleep(1.1)  # its deadline passes in the queue
    assert runtime.process(job.id) is JobStatus.FAILED
    assert _code(runtime, job) == "timeout"


def test_timeout_while_decoding(runtime: WorkerRuntime) -> None:
    runtime.engine.decoder = DecodesUntilStopped(runtime.engine.decoder)
    job = _job(runtime)
    started = time.monotonic()
    assert runtime.process(job.id) is JobStatus.FAILED
    assert _code(runtime, job) == "timeout"
    assert time.monotonic() - started < 3


def test_timeout_when_the_batch_does_not_stop_in_time(runtime: WorkerRuntime) -> None:
    deaf = IgnoresDeadlines(runtime.engine.decoder, seconds=10)
    runtime.engine.decoder = deaf
    try:
        job = _job(runtime)
        started = time.monotonic()
        assert runtime.process(job.id) is JobStatus.FAILED  # not internal_error
        assert _code(runtime, job) == "timeout"
        assert time.monotonic() - started < 3  # deadline (1 s) + grace (0.5 s)
    finally:
        deaf.done.set()


def test_timeout_while_preparing(runtime: WorkerRuntime) -> None:
    job = Job.new("q", JobParams(max_new_tokens=8, max_tiles=12, timeout_s=1), 1)
    job = runtime.store.create(job, [photo(4000, 3000)])  # seconds of decoding and tiling
    time.sleep(0.95)
    assert runtime.process(job.id) is JobStatus.FAILED
    assert _code(runtime, job) == "timeout"
