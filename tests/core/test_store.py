import pytest
import redis

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.keys import images_key, job_key
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import ClaimOutcome, JobStore

PARAMS = JobParams(max_new_tokens=8, max_tiles=2)


def _new(store: JobStore, images: int = 2) -> Job:
    job = Job.new("what?", PARAMS, image_count=images, metadata={"k": 1})
    return store.create(job, [b"img%d" % i for i in range(images)])


def test_create_and_read_back(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=100)
    job = _new(store)
    assert store.get(job.id) == job
    assert job.expires_at == pytest.approx(job.created_at + 100, abs=0.05)
    assert store.images(job.id) == [b"img0", b"img1"]
    assert 0 < redis_client.ttl(job_key(job.id)) <= 100
    assert 0 < redis_client.ttl(images_key(job.id)) <= 100


def test_unknown_job_reads_none(redis_client: redis.Redis) -> None:
    assert JobStore(redis_client, retention_s=100).get("nope") is None


def test_claim_then_finish(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=100)
    job = _new(store)
    claim = store.claim(job.id, max_attempts=3)
    assert claim.outcome is ClaimOutcome.CLAIMED
    assert claim.job is not None
    assert claim.job.status is JobStatus.RUNNING
    assert claim.job.attempts == 1
    assert claim.job.started_at is not None
    done = store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "a"})
    assert done is not None and done.status is JobStatus.SUCCEEDED
    stored = store.get(job.id)
    assert stored is not None
    assert stored.result == {"answer": "a"}
    assert stored.finished_at is not None
    assert not redis_client.exists(images_key(job.id))  # images go once the job is done


def test_redelivery_of_finished_job_changes_nothing(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=100)
    job = _new(store)
    claim = store.claim(job.id, max_attempts=3)
    assert claim.job is not None
    store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "a"})
    before = store.get(job.id)
    again = store.claim(job.id, max_attempts=3)
    assert again.outcome is ClaimOutcome.ALREADY_TERMINAL
    assert store.get(job.id) == before


def test_only_the_latest_delivery_may_store_an_outcome(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=100)
    job = _new(store)
    # The first delivery's worker stopped renewing its lease (lease_s=0: lapsed at once).
    first = store.claim(job.id, max_attempts=3, lease_s=0).job
    second = store.claim(job.id, max_attempts=3).job  # redelivered: takes the job over
    assert first is not None and second is not None
    assert second.attempts == 2
    assert store.finish(first, JobStatus.SUCCEEDED, result={"answer": "first"}) is None
    assert store.finish(second, JobStatus.SUCCEEDED, result={"answer": "second"}) is not None
    assert store.finish(second, JobStatus.FAILED, error={"code": "x", "message": "y"}) is None
    stored = store.get(job.id)
    assert stored is not None
    assert stored.result == {"answer": "second"}


def test_gives_up_after_max_attempts(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=100)
    job = _new(store)
    for _ in range(2):  # each delivery's worker died (its lease lapsed at once)
        assert store.claim(job.id, max_attempts=2, lease_s=0).outcome is ClaimOutcome.CLAIMED
    last = store.claim(job.id, max_attempts=2)
    assert last.outcome is ClaimOutcome.GAVE_UP
    stored = store.get(job.id)
    assert stored is not None
    assert stored.status is JobStatus.FAILED
    assert stored.error is not None and stored.error["code"] == "too_many_attempts"


def test_a_duplicate_message_leaves_a_leased_job_to_its_delivery(
    redis_client: redis.Redis,
) -> None:
    store = JobStore(redis_client, retention_s=100)
    job = _new(store)
    first = store.claim(job.id, max_attempts=3, worker="w1", lease_s=30)
    duplicate = store.claim(job.id, max_attempts=3, worker="w2", lease_s=30)
    assert duplicate.outcome is ClaimOutcome.OWNED
    stored = store.get(job.id)
    assert stored is not None and first.job is not None
    assert (stored.worker, stored.attempts, stored.attempt_token) == (
        "w1",
        1,
        first.job.attempt_token,
    )


def test_missing_job_claims_nothing(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=100)
    assert store.claim("gone", max_attempts=3).outcome is ClaimOutcome.MISSING
    assert list(redis_client.scan_iter("iq:*")) == []


def test_dispatch_states_read_what_the_reapers_decide_on(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=100)
    queued, running = _new(store), _new(store)
    store.claim(running.id, max_attempts=3)
    states = store.dispatch_states([queued.id, "gone", running.id])
    assert states[1] is None
    assert states[0] is not None and states[0].status is JobStatus.QUEUED
    assert states[0].dispatched_at == store.get(queued.id).dispatched_at  # type: ignore[union-attr]
    assert states[0].queue == queued.queue
    assert states[2] is not None and states[2].status is JobStatus.RUNNING
