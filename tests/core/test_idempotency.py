"""Idempotency-Key: bound to its job in the job's create transaction, and the fingerprint of the
validated request."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import redis

from internvl_queue.core.errors import BadRequest
from internvl_queue.core.idempotency import (
    Binding,
    IdempotencyStore,
    KeyAlreadyBound,
    check_key,
    request_fingerprint,
)
from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.keys import job_key, queued_key
from internvl_queue.core.settings import Settings
from internvl_queue.core.signing import generate_secret
from internvl_queue.core.store import JobStore
from internvl_queue.core.submission import Submission, prepare_job
from tests.images import photo
from tests.receiver import wait_until

PARAMS = JobParams(max_new_tokens=8, max_tiles=2)
JPEG = photo(64, 48, seed=1)


def _job() -> Job:
    return Job.new("what?", PARAMS, image_count=1)


def _job_records(client: redis.Redis) -> list[bytes]:
    """Every stored job record (not the images or deliveries kept beside them)."""
    return [k for k in client.scan_iter(match="iq:job:*") if k.count(b":") == 2]


def test_a_key_is_bound_to_its_job_in_the_create_transaction(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=1000)
    keys = IdempotencyStore(redis_client, ttl_s=100)
    assert keys.lookup("k1", "order-1") is None
    job = store.create(_job(), [JPEG], key=keys.claim("k1", "order-1", "fp1"))
    assert keys.lookup("k1", "order-1") == Binding(job.id, "fp1")
    assert redis_client.exists(job_key(job.id))
    [name] = redis_client.keys("iq:idem:*")
    assert 90 < redis_client.ttl(name) <= 100
    assert b"order-1" not in name  # the caller's key is hashed
    # The same key again, whatever the payload: nothing is written, the binding says which job.
    with pytest.raises(KeyAlreadyBound) as caught:
        store.create(_job(), [JPEG], key=keys.claim("k1", "order-1", "fp2"))
    assert caught.value.binding == Binding(job.id, "fp1")
    assert _job_records(redis_client) == [job_key(job.id).encode()]
    assert redis_client.zcard(queued_key()) == 1


def test_keys_are_scoped_per_api_key(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=1000)
    keys = IdempotencyStore(redis_client, ttl_s=100)
    first = store.create(_job(), [JPEG], key=keys.claim("k1", "abc", "fp"))
    second = store.create(_job(), [JPEG], key=keys.claim("k2", "abc", "fp"))
    assert first.id != second.id
    assert keys.lookup("k1", "abc") == Binding(first.id, "fp")
    assert keys.lookup("k2", "abc") == Binding(second.id, "fp")


def test_a_key_whose_job_expired_is_free_again(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=1000)
    keys = IdempotencyStore(redis_client, ttl_s=100)
    gone = store.create(_job(), [JPEG], key=keys.claim("", "abc", "fp1"))
    redis_client.delete(job_key(gone.id))  # its retention ended before the key's
    new = store.create(_job(), [JPEG], key=keys.claim("", "abc", "fp2"))
    assert keys.lookup("", "abc") == Binding(new.id, "fp2")


@pytest.mark.parametrize("same_payload", [True, False])
def test_racing_creates_with_one_key_make_one_job_that_the_key_names(
    redis_client: redis.Redis, same_payload: bool
) -> None:
    """Eight requests with one key, each having read it free before any writes: one job is
    created and the key is bound to it; each of the others is told which job that is, and
    wrote nothing.

    The race is made, not hoped for: Redis holds every write (``CLIENT PAUSE WRITE``) until all
    eight transactions have read the key and wait at ``EXEC``.
    """
    store = JobStore(redis_client, retention_s=1000)
    keys = IdempotencyStore(redis_client, ttl_s=100)
    racers = 8

    def create(n: int) -> str:
        claim = keys.claim("", "race", "fp" if same_payload else f"fp-{n}")
        try:
            return store.create(_job(), [JPEG], key=claim).id
        except KeyAlreadyBound as taken:
            return f"bound:{taken.binding.job_id}"

    redis_client.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
    try:
        with ThreadPoolExecutor(racers) as pool:
            racing = [pool.submit(create, n) for n in range(racers)]
            wait_until(
                lambda: redis_client.info("clients")["blocked_clients"] == racers,
                10,
                "every create to wait at EXEC",
            )
            redis_client.execute_command("CLIENT", "UNPAUSE")
            results = [r.result(timeout=30) for r in racing]
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
    created = [r for r in results if not r.startswith("bound:")]
    assert len(created) == 1, results
    [job_id] = created
    assert results.count(f"bound:{job_id}") == racers - 1
    assert _job_records(redis_client) == [job_key(job_id).encode()]
    assert redis_client.zcard(queued_key()) == 1
    bound = keys.lookup("", "race")
    assert bound is not None and bound.job_id == job_id


def _settings() -> Settings:
    return Settings(webhook_secrets=generate_secret(), webhook_allowed_cidrs="127.0.0.0/8")


def _fingerprint(**fields: object) -> str:
    submission = Submission(**{"question": "What is this?", "images": [JPEG], **fields})  # type: ignore[arg-type]
    return request_fingerprint(prepare_job(submission, _settings()), submission.images)


def test_the_fingerprint_is_the_validated_requests_whatever_its_form() -> None:
    settings = _settings()
    as_json = _fingerprint(
        max_new_tokens=2,
        metadata={"b": 1, "a": [1, 2]},
        webhook_url="http://127.0.0.1:9/hook",
        webhook_events=["job.succeeded", "job.started"],
    )
    as_form = _fingerprint(
        max_new_tokens=" 2",
        metadata='{"a": [1, 2], "b": 1}',
        webhook_url="http://127.0.0.1:9/hook",
        webhook_events="job.started, job.succeeded",
    )
    assert as_json == as_form
    # A default written out is the same request as one left out.
    assert _fingerprint() == _fingerprint(max_new_tokens=settings.default_max_new_tokens)
    assert _fingerprint() == _fingerprint(max_tiles="", timeout_s=None, metadata="")


@pytest.mark.parametrize(
    "change",
    [
        {"question": "What is that?"},
        {"images": [photo(64, 48, seed=2)]},
        {"images": [JPEG, JPEG]},
        {"max_new_tokens": 3},
        {"max_tiles": 1},
        {"timeout_s": 30},
        {"metadata": {"a": 1}},
        {"webhook_url": "http://127.0.0.1:9/hook"},
        {"webhook_url": "http://127.0.0.1:9/hook", "webhook_events": ["job.started"]},
    ],
)
def test_any_change_to_the_request_changes_the_fingerprint(change: dict[str, object]) -> None:
    assert _fingerprint(**change) != _fingerprint()


def test_the_fingerprint_ignores_what_differs_between_two_prepared_copies() -> None:
    """Ids, times and the owner are not the request: a retry prepares another job from it."""
    submission = Submission(question="What is this?", images=[JPEG])
    one, two = (prepare_job(submission, _settings()) for _ in range(2))
    assert one.id != two.id
    assert request_fingerprint(one, [JPEG]) == request_fingerprint(
        replace(two, owner="someone"), [JPEG]
    )


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\t", "é"])
def test_unusable_keys_are_refused(key: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_key(key)
    assert caught.value.code == "invalid_idempotency_key"


def test_usable_key_passes() -> None:
    assert check_key("order-42:attempt/1") == "order-42:attempt/1"
