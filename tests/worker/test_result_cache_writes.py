"""What a worker keeps in the result cache: the answer of a job it stored succeeded, under its own
model; nothing for a failed job, nor for a job without a digest (``cache: false``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.result_cache import ResultCache, digest
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.worker.runtime import WorkerRuntime
from tests.images import photo
from tests.worker.test_runtime import answers_fine, raises_model_error

PARAMS = JobParams(max_new_tokens=4, max_tiles=2)
IMAGE = photo(20, 20)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[WorkerRuntime]:
    rt = WorkerRuntime(replace(settings, result_cache_ttl_s=60), name="test-worker")
    rt.use_model(None, answers_fine)
    yield rt
    rt.close()


def _queued(runtime: WorkerRuntime, question: str, *, cached: bool = True) -> Job:
    job = Job.new(question, PARAMS, image_count=1)
    found = digest([IMAGE], question, PARAMS, scope="") if cached else None
    return runtime.store.create(replace(job, cache_digest=found or ""), [IMAGE])


def test_a_succeeded_answer_is_kept_under_the_workers_model(
    runtime: WorkerRuntime, redis_client: redis.Redis
) -> None:
    job = _queued(runtime, "what?")
    assert runtime.process(job.id) is JobStatus.SUCCEEDED
    cache = ResultCache(redis_client, ttl_s=60, max_entries=10)
    entry = cache.get(runtime.settings.model, job.cache_digest)
    assert entry is not None and entry["answer"] == "1 image(s): what?"
    assert cache.get("another-model", job.cache_digest) is None
    stored = runtime.store.get(job.id)
    assert stored is not None and stored.result is not None
    assert stored.result["cached"] is False  # it ran


def test_a_failed_job_is_not_kept(runtime: WorkerRuntime, redis_client: redis.Redis) -> None:
    runtime.use_model(None, raises_model_error)
    job = _queued(runtime, "what?")
    assert runtime.process(job.id) is JobStatus.FAILED
    assert ResultCache(redis_client, ttl_s=60, max_entries=10).size() == 0
    assert list(redis_client.scan_iter(match="iq:result_cache*")) == []


def test_a_job_without_a_digest_is_not_kept(
    runtime: WorkerRuntime, redis_client: redis.Redis
) -> None:
    job = _queued(runtime, "what?", cached=False)
    assert runtime.process(job.id) is JobStatus.SUCCEEDED
    assert list(redis_client.scan_iter(match="iq:result_cache*")) == []
