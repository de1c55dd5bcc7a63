"""The outbox against a real Redis: atomic leases, stale attempts refused, the delivery log."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.keys import event_key, job_key, outbox_key
from internvl_queue.core.outbox import Attempt, DeliveryOutcome, Outbox
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore

PARAMS = JobParams(max_new_tokens=8, max_tiles=2)
URL = "https://hooks.example.com/internvl"


def _finished_job(store: JobStore, events: tuple[str, ...] = ("job.succeeded",)) -> Job:
    job = store.create(
        Job.new("what?", PARAMS, image_count=1, webhook_url=URL, webhook_events=events), [b"i"]
    )
    claim = store.claim(job.id, max_attempts=3)
    assert claim.job is not None
    done = store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "a"})
    assert done is not None
    return done


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, retention_s=3600)


@pytest.fixture
def outbox(redis_client: redis.Redis) -> Outbox:
    return Outbox(redis_client, lease_s=30, retention_s=3600)


def test_a_finished_job_stages_one_leasable_event(store: JobStore, outbox: Outbox) -> None:
    job = _finished_job(store)
    now = time.time()
    leased = outbox.lease_due(now, limit=10)
    assert len(leased) == 1
    event_id, token = leased[0]
    event = outbox.load(event_id)
    assert event is not None
    assert (event.job_id, event.type, event.url, event.lease_token) == (
        job.id,
        "job.succeeded",
        URL,
        token,
    )
    # Leased: not due again until the lease runs out.
    assert outbox.lease_due(now + 1, limit=10) == []
    assert outbox.due_at(event_id) == pytest.approx(now + 30, abs=0.05)
    again = outbox.lease_due(now + 31, limit=10)
    assert [e for e, _ in again] == [event_id] and again[0][1] != token


def test_events_not_yet_due_and_the_limit(store: JobStore, outbox: Outbox) -> None:
    for _ in range(3):
        _finished_job(store)
    assert outbox.lease_due(time.time() - 60, limit=10) == []
    assert len(outbox.lease_due(time.time(), limit=2)) == 2
    assert len(outbox.lease_due(time.time(), limit=2)) == 1


def test_concurrent_pollers_never_lease_the_same_event(
    store: JobStore, redis_url: str, redis_client: redis.Redis
) -> None:
    for _ in range(40):
        _finished_job(store)
    results: list[list[tuple[str, str]]] = []
    barrier = threading.Barrier(4)

    def poll() -> None:
        client = redis.Redis.from_url(redis_url)
        box = Outbox(client, lease_s=30, retention_s=3600)
        barrier.wait()
        mine: list[tuple[str, str]] = []
        for _ in range(10):
            mine += box.lease_due(time.time(), limit=3)
        results.append(mine)
        client.close()

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [e for leased in results for e, _ in leased]
    assert len(ids) == 40 and len(set(ids)) == 40


def test_an_expired_event_is_dropped_from_the_outbox(
    store: JobStore, outbox: Outbox, redis_client: redis.Redis
) -> None:
    _finished_job(store)
    (event_id,) = [m.decode() for m in redis_client.zrange(outbox_key(), 0, -1)]
    redis_client.delete(event_key(event_id))
    assert outbox.lease_due(time.time(), limit=10) == []
    assert redis_client.zcard(outbox_key()) == 0


def test_retry_then_deliver_logs_every_attempt(
    store: JobStore, outbox: Outbox, redis_client: redis.Redis
) -> None:
    job = _finished_job(store)
    job_before = redis_client.hgetall(job_key(job.id))
    now = time.time()
    ((event_id, token),) = outbox.lease_due(now, limit=1)
    failed = Attempt(
        at=now,
        outcome=DeliveryOutcome.RETRYING,
        status_code=500,
        duration_ms=12.34,
        next_attempt_at=now + 5,
    )
    assert outbox.record_attempt(event_id, token, failed)
    assert outbox.due_at(event_id) == pytest.approx(now + 5, abs=0.05)
    event = outbox.load(event_id)
    assert event is not None and event.attempts == 1 and event.lease_token == ""
    assert outbox.lease_due(now + 4, limit=1) == []
    ((_, token2),) = outbox.lease_due(now + 5, limit=1)
    ok = Attempt(at=now + 5, outcome=DeliveryOutcome.DELIVERED, status_code=204)
    assert outbox.record_attempt(event_id, token2, ok)
    assert outbox.due_at(event_id) is None
    event = outbox.load(event_id)
    assert event is not None and (event.attempts, event.outcome) == (2, "delivered")
    log = outbox.deliveries(job.id)
    assert [(e["attempt"], e["status_code"], e["outcome"]) for e in log] == [
        (1, 500, "retrying"),
        (2, 204, "delivered"),
    ]
    assert log[0]["event_id"] == event_id and log[0]["type"] == "job.succeeded"
    assert log[0]["url"] == URL and log[0]["duration_ms"] == 12.3
    assert log[0]["at"].endswith("Z") and log[0]["next_attempt_at"].endswith("Z")
    assert log[1]["next_attempt_at"] is None and log[1]["error"] is None
    # A delivery never touches the job record.
    assert redis_client.hgetall(job_key(job.id)) == job_before


def test_a_stale_lease_cannot_record(store: JobStore, outbox: Outbox) -> None:
    job = _finished_job(store)
    now = time.time()
    ((event_id, old),) = outbox.lease_due(now, limit=1)
    ((_, new),) = outbox.lease_due(now + 31, limit=1)  # the first lease ran out: taken over
    gone = Attempt(at=now, outcome=DeliveryOutcome.GONE, status_code=410)
    assert not outbox.record_attempt(event_id, old, gone)
    assert outbox.deliveries(job.id) == []
    assert outbox.record_attempt(event_id, new, gone)
    # Finished: the same token cannot record twice, and the event is never leased again.
    assert not outbox.record_attempt(event_id, new, gone)
    assert outbox.lease_due(now + 1000, limit=10) == []
    assert [e["outcome"] for e in outbox.deliveries(job.id)] == ["gone"]


def test_the_event_record_outlives_its_next_attempt(
    store: JobStore, redis_client: redis.Redis
) -> None:
    outbox = Outbox(redis_client, lease_s=30, retention_s=3600)
    _finished_job(store)
    now = time.time()
    ((event_id, token),) = outbox.lease_due(now, limit=1)
    redis_client.expire(event_key(event_id), 10)
    late = Attempt(at=now, outcome=DeliveryOutcome.RETRYING, next_attempt_at=now + 100)
    assert outbox.record_attempt(event_id, token, late)
    assert redis_client.ttl(event_key(event_id)) >= 130


def test_attempt_validates_next_attempt_at() -> None:
    with pytest.raises(ValueError):
        Attempt(at=0, outcome=DeliveryOutcome.RETRYING)
    with pytest.raises(ValueError):
        Attempt(at=0, outcome=DeliveryOutcome.DELIVERED, next_attempt_at=5)


def test_unknown_job_has_no_deliveries(outbox: Outbox) -> None:
    assert outbox.deliveries("nope") == []
