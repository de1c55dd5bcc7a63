"""A job whose deadline passes while it waits in the queue ends ``timeout`` at its deadline,
through the reapers that every worker runs, even when no worker consumes its queue (so no
backlog can outlast a job's record)."""

from __future__ import annotations

import time

import redis

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from tests.conftest import WorkerProcess


def test_a_job_queued_past_its_deadline_ends_timeout_without_a_consumer(
    worker: WorkerProcess, settings: Settings, redis_client: redis.Redis
) -> None:
    store = JobStore.from_settings(redis_client, settings)
    params = JobParams(max_new_tokens=4, max_tiles=1, timeout_s=1)
    job = store.create(Job.new("q", params, 1, queue="nobody-consumes-this"), [b"img"])
    started = time.monotonic()
    while (current := store.get(job.id)) is not None and current.status is JobStatus.QUEUED:
        assert time.monotonic() - started < 10, "the job stayed queued past its deadline"
        time.sleep(0.05)
    took = time.monotonic() - started
    assert current is not None and current.status is JobStatus.FAILED
    assert current.error is not None and current.error["code"] == "timeout"
    print(f"\nqueued job with timeout_s=1 ended timeout after {took:.1f} s")
    assert took >= 0.9  # at its deadline, not before
