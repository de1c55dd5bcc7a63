"""One delivery of a job through ``WorkerRuntime``, in-process, with a real Redis and one named
fake model per failure mode (the model is the outermost edge here)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
import redis

from internvl_queue.core.errors import GpuOutOfMemory, InferenceError, JobCanceled
from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.worker.answer import Answer
from internvl_queue.worker.runtime import WorkerRuntime
from tests.images import photo


def answers_fine(images: list[Any], question: str, **params: Any) -> Answer:
    return Answer(
        text=f"{len(images)} image(s): {question}",
        prompt_tokens=10,
        completion_tokens=3,
        image_tiles=len(images),
        preprocess_ms=1.0,
        inference_ms=2.0,
    )


def raises_model_error(images: list[Any], question: str, **params: Any) -> Answer:
    raise InferenceError("the model failed on this job: RuntimeError: boom")


def raises_gpu_oom(images: list[Any], question: str, **params: Any) -> Answer:
    raise GpuOutOfMemory("the job does not fit in GPU memory")


def raises_a_bug(images: list[Any], question: str, **params: Any) -> Answer:
    raise KeyError("a bug in our own code")


@pytest.fixture
def runtime(settings: Settings) -> Iterator[WorkerRuntime]:
    rt = WorkerRuntime(settings, name="test-worker")
    rt.use_model(None, answers_fine)
    yield rt
    rt.close()


def _queued(runtime: WorkerRuntime, images: list[bytes] | None = None) -> Job:
    job = Job.new("what?", JobParams(max_new_tokens=4, max_tiles=2), image_count=1)
    return runtime.store.create(job, images or [photo(20, 20)])


def test_success_stores_result_and_counts(
    runtime: WorkerRuntime, redis_client: redis.Redis
) -> None:
    job = _queued(runtime)
    assert runtime.process(job.id) is JobStatus.SUCCEEDED
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.result is not None
    assert stored.result["answer"] == "1 image(s): what?"
    assert stored.result["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "image_tiles": 1}
    assert runtime.info().jobs_succeeded == 1


@pytest.mark.parametrize(
    ("fake", "code"),
    [
        (raises_model_error, "model_error"),
        (raises_gpu_oom, "gpu_out_of_memory"),
        (raises_a_bug, "internal_error"),
    ],
)
def test_a_failing_job_is_stored_failed_and_the_runtime_carries_on(
    runtime: WorkerRuntime, fake: Any, code: str
) -> None:
    runtime.use_model(None, fake)
    bad = _queued(runtime)
    assert runtime.process(bad.id) is JobStatus.FAILED
    stored = runtime.store.get(bad.id)
    assert stored is not None and stored.error is not None
    assert stored.error["code"] == code
    assert stored.result is None
    runtime.use_model(None, answers_fine)
    good = _queued(runtime)
    assert runtime.process(good.id) is JobStatus.SUCCEEDED
    assert (runtime.info().jobs_failed, runtime.info().jobs_succeeded) == (1, 1)


def test_redelivery_after_success_is_a_no_op(runtime: WorkerRuntime) -> None:
    job = _queued(runtime)
    runtime.process(job.id)
    before = runtime.store.get(job.id)
    runtime.use_model(None, raises_model_error)  # would fail it, if it ran again
    assert runtime.process(job.id) is None
    assert runtime.store.get(job.id) == before
    assert runtime.info().redeliveries_ignored == 1


def test_unknown_job_is_dropped(runtime: WorkerRuntime) -> None:
    assert runtime.process("no-such-job") is None
    assert runtime.info().jobs_done == 0


def test_a_job_whose_worker_keeps_dying_fails_after_max_attempts(
    runtime: WorkerRuntime, settings: Settings
) -> None:
    job = _queued(runtime)
    for _ in range(settings.max_attempts):  # each delivery claimed, then its worker "died"
        runtime.store.claim(job.id, max_attempts=settings.max_attempts, lease_s=0)
    assert runtime.process(job.id) is JobStatus.FAILED
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.error is not None
    assert stored.error["code"] == "too_many_attempts"


def test_heartbeat_is_published(runtime: WorkerRuntime) -> None:
    runtime.publish_heartbeat()
    [info] = runtime.registry.live()
    assert (info.name, info.model) == ("test-worker", runtime.settings.model)


def test_a_job_past_its_deadline_fails_with_timeout_without_running(
    runtime: WorkerRuntime,
) -> None:
    job = Job.new("q", JobParams(max_new_tokens=4, max_tiles=1, timeout_s=1), image_count=1)
    job = replace(job, created_at=job.created_at - 5)  # submitted 5 s ago, deadline 1 s
    runtime.store.create(job, [photo(20, 20)])
    runtime.use_model(None, raises_a_bug)  # would fail differently, if it ran
    assert runtime.process(job.id) is JobStatus.FAILED
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.error is not None
    assert stored.error["code"] == "timeout"


class RunsUntilCanceled:
    """A model that decodes "for ever", looking at its cancel hook as the engine does."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.saw_cancel = False

    def __call__(self, images: list[Any], question: str, **params: Any) -> Answer:
        self.started.set()
        is_canceled = params["is_canceled"]
        for _ in range(1000):  # 10 s at most
            if is_canceled():
                self.saw_cancel = True
                raise JobCanceled("the job was canceled")
            time.sleep(0.01)
        return answers_fine(images, question)


def test_a_cancel_reaches_the_running_job_and_it_ends_canceled(runtime: WorkerRuntime) -> None:
    model = RunsUntilCanceled()
    runtime.use_model(None, model)
    runtime.cancels.start()
    job = _queued(runtime)
    with ThreadPoolExecutor(max_workers=1) as pool:
        delivery = pool.submit(runtime.process, job.id)
        assert model.started.wait(10)
        runtime.store.cancel(job.id)  # what POST /v1/jobs/<id>/cancel does
        assert delivery.result(timeout=10) is JobStatus.CANCELED
    assert model.saw_cancel  # stopped by the hook, not merely overruled when stored
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.status is JobStatus.CANCELED
    assert stored.error is not None and stored.error["code"] == "canceled"


def test_a_cancel_mark_is_found_even_without_its_message(
    runtime: WorkerRuntime, redis_client: redis.Redis
) -> None:
    from internvl_queue.core.keys import job_key
    from internvl_queue.worker.cancellation import CancelWatcher

    watcher = CancelWatcher(redis_client, recheck_s=0.2)
    watcher.start()
    try:
        job = _queued(runtime)
        event = watcher.watch(job.id)
        # Marked without a message on the channel (as if published while reconnecting).
        redis_client.hset(job_key(job.id), "cancel_requested_at", "1.0")
        assert event.wait(5)
    finally:
        watcher.stop()


def test_hundreds_of_task_threads_finishing_at_once_all_store_their_outcome(
    settings: Settings,
) -> None:
    # Regression: redis-py's default pool refuses a 101st connection ("Too many connections"),
    # which 256 task threads finishing together reached on the GPU worker; jobs stayed running.
    runtime = WorkerRuntime(replace(settings, worker_concurrency=256), name="busy-worker")
    barrier = threading.Barrier(256)

    def answers_together(images: list[Any], question: str, **params: Any) -> Answer:
        barrier.wait(timeout=60)  # every thread then hits Redis at the same moment
        return answers_fine(images, question, **params)

    runtime.use_model(None, answers_together)
    jobs = [_queued(runtime) for _ in range(256)]
    with ThreadPoolExecutor(max_workers=256) as pool:
        statuses = list(pool.map(lambda job: runtime.process(job.id), jobs))
    runtime.close()
    assert statuses == [JobStatus.SUCCEEDED] * 256
