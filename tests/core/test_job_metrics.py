"""Job counters in Redis: counted in the transaction that stores the state, so exactly once per
job whatever the redeliveries; webhook attempts once per recorded attempt (a real Redis, the
real store and outbox)."""

from __future__ import annotations

import time

import pytest
import redis

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.job_metrics import HISTOGRAMS, read_job_metrics
from internvl_queue.core.outbox import Attempt, DeliveryOutcome, Outbox
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore

PARAMS = JobParams(max_new_tokens=8, max_tiles=2)
RESULT = {
    "answer": "a cat",
    "usage": {"prompt_tokens": 300, "completion_tokens": 20, "image_tiles": 5},
    "batch_size": 3,
    "timings_ms": {"queued": 10.0, "preprocess": 30.0, "inference": 700.0, "total": 760.0},
}


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, retention_s=3600)


def _running(store: JobStore, **fields: object) -> Job:
    job = store.create(Job.new("what?", PARAMS, image_count=1, **fields), [b"i"])  # type: ignore[arg-type]
    claim = store.claim(job.id, max_attempts=3, worker="w")
    assert claim.job is not None
    return claim.job


def test_a_job_counts_once_however_often_its_outcome_is_stored(
    store: JobStore, redis_client: redis.Redis
) -> None:
    job = _running(store)
    assert store.finish(job, JobStatus.SUCCEEDED, result=RESULT) is not None
    # A second delivery's outcome, and a redelivered claim, store nothing and count nothing.
    assert store.finish(job, JobStatus.FAILED, error={"code": "x", "message": "m"}) is None
    assert store.claim(job.id, max_attempts=3).job is not None  # ALREADY_TERMINAL
    found = read_job_metrics(redis_client)
    assert found.submitted == 1
    assert found.finished == {("succeeded", ""): 1}
    assert found.generated_tokens == 20
    inference = found.histograms[("inference_seconds", "")]
    assert (inference.count, inference.sum) == (1, pytest.approx(0.7))
    # Cumulative buckets: 0.7 s lies in the 1.0 bucket and every one above it.
    assert [count for _, count in inference.buckets] == [
        1 if bound >= 1.0 else 0 for bound in (*HISTOGRAMS["inference_seconds"], float("inf"))
    ]
    assert found.histograms[("batch_size", "")].sum == 3
    assert found.histograms[("image_tiles", "")].sum == 5
    assert found.histograms[("total_seconds", "succeeded")].count == 1
    assert found.histograms[("queued_seconds", "")].count == 1


def test_failures_and_cancels_count_by_code(store: JobStore, redis_client: redis.Redis) -> None:
    failed = _running(store)
    store.finish(failed, JobStatus.FAILED, error={"code": "image_decode_error", "message": "m"})
    queued = store.create(Job.new("q", PARAMS, image_count=1), [b"i"])
    store.cancel(queued.id)
    store.cancel(queued.id)  # already finished: not counted again
    found = read_job_metrics(redis_client)
    assert found.submitted == 2
    assert found.finished == {("failed", "image_decode_error"): 1, ("canceled", "canceled"): 1}
    # A canceled queued job never started: it has a total time but no queued time.
    assert found.histograms[("queued_seconds", "")].count == 1
    assert found.histograms[("total_seconds", "canceled")].count == 1
    assert ("inference_seconds", "") not in found.histograms


def test_webhook_attempts_count_once_each_recorded(
    store: JobStore, redis_client: redis.Redis
) -> None:
    url = "https://hooks.example.com/x"
    job = _running(store, webhook_url=url, webhook_events=("job.succeeded",))
    store.finish(job, JobStatus.SUCCEEDED, result=RESULT)
    outbox = Outbox(redis_client, lease_s=30, retention_s=3600)
    now = time.time()
    ((event_id, old),) = outbox.lease_due(now, limit=1)
    retry = Attempt(at=now, outcome=DeliveryOutcome.RETRYING, error="refused", next_attempt_at=now)
    assert outbox.record_attempt(event_id, old, retry)
    ((_, token),) = outbox.lease_due(now + 1, limit=1)
    ok = Attempt(at=now, outcome=DeliveryOutcome.DELIVERED, status_code=204)
    assert outbox.record_attempt(event_id, token, ok)
    assert not outbox.record_attempt(event_id, token, ok)  # finished: not recorded, not counted
    assert read_job_metrics(redis_client).webhook_attempts == {"retrying": 1, "delivered": 1}
