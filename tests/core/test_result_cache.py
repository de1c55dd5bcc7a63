"""The result cache against a real Redis: the digest (what decides an answer, and nothing else),
entries per model, TTL expiry, the bound on entries, and a job stored already answered."""

from __future__ import annotations

import json
import time
from dataclasses import fields, replace

import pytest
import redis

from internvl_queue.core.idempotency import KeyAlreadyBound, KeyClaim
from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.job_metrics import read_job_metrics
from internvl_queue.core.keys import event_key, outbox_key, queued_key
from internvl_queue.core.result_cache import (
    ANSWER_PARAMS,
    DELIVERY_PARAMS,
    ResultCache,
    answered_from_cache,
    digest,
)
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from internvl_queue.core.submission import Submission, prepare_job
from tests.images import photo
from tests.receiver import wait_until

PARAMS = JobParams(max_new_tokens=8, max_tiles=2, timeout_s=60)
A, B = photo(32, 32, seed=1), photo(32, 32, seed=2)
MODEL = "OpenGVLab/InternVL3-1B-hf"
RESULT = {
    "answer": "a cat",
    "model": MODEL,
    "usage": {"prompt_tokens": 300, "completion_tokens": 3, "image_tiles": 1},
    "batch_size": 12,
    "cached": False,
    "timings_ms": {"queued": 1.0, "preprocess": 2.0, "inference": 30.0, "total": 40.0},
}


def _digest(**change: object) -> str | None:
    args: dict[str, object] = {
        "images": [A, B],
        "question": "What is it?",
        "params": PARAMS,
        "scope": "key1",
    }
    return digest(**{**args, **change})  # type: ignore[arg-type]


def test_the_digest_covers_what_decides_an_answer_and_nothing_else() -> None:
    same = _digest()
    assert same is not None and same == _digest()
    differing = [
        _digest(question="What is that?"),
        _digest(params=replace(PARAMS, max_new_tokens=9)),
        _digest(params=replace(PARAMS, max_tiles=3)),
        _digest(images=[A, photo(32, 32, seed=3)]),
        _digest(images=[B, A]),  # order matters: "the second image" names another one
        _digest(images=[A]),
        _digest(scope="key2"),
        _digest(scope=None),
    ]
    assert same not in differing and len(set(differing)) == len(differing)
    # The deadline changes when an answer comes, not what it is.
    assert _digest(params=replace(PARAMS, timeout_s=3600)) == same


def test_every_job_param_is_placed() -> None:
    """A param added to JobParams must be said to change the answer (key) or not."""
    assert {f.name for f in fields(JobParams)} == set(ANSWER_PARAMS) | set(DELIVERY_PARAMS)


def _cache(client: redis.Redis, ttl_s: int = 60, max_entries: int = 100) -> ResultCache:
    return ResultCache(client, ttl_s=ttl_s, max_entries=max_entries)


def test_an_answer_is_kept_per_model(redis_client: redis.Redis) -> None:
    cache = _cache(redis_client)
    key = _digest()
    assert key is not None and cache.get(MODEL, key) is None
    cache.put(MODEL, key, RESULT)
    entry = cache.get(MODEL, key)
    # Only what describes the answer: the run's timings and batch are not replayed.
    assert entry == {"answer": "a cat", "model": MODEL, "usage": RESULT["usage"]}
    assert cache.get("OpenGVLab/InternVL3-2B-hf", key) is None
    assert cache.get(MODEL, _digest(question="other") or "") is None


def test_entries_expire_after_the_ttl(redis_client: redis.Redis) -> None:
    cache = _cache(redis_client, ttl_s=1)
    key = _digest() or ""
    cache.put(MODEL, key, RESULT)
    assert cache.get(MODEL, key) is not None
    wait_until(lambda: cache.get(MODEL, key) is None, 5, "the entry to expire")
    # The next insertion drops the expired entry from the index too.
    cache.put(MODEL, _digest(question="next") or "", RESULT)
    assert cache.size() == 1


def test_the_oldest_entries_are_evicted_beyond_the_bound(redis_client: redis.Redis) -> None:
    cache = _cache(redis_client, max_entries=3)
    keys = [_digest(question=f"question {i}") or "" for i in range(5)]
    evicted = [cache.put(MODEL, key, RESULT) for key in keys]
    assert evicted == [0, 0, 0, 1, 1]
    assert cache.size() == 3
    assert [cache.get(MODEL, key) is not None for key in keys] == [False, False, True, True, True]
    # Bounded in Redis keys too, not only in the index.
    assert len(list(redis_client.scan_iter(match="iq:result_cache:*"))) == 3


def test_a_ttl_of_zero_turns_the_cache_off(redis_client: redis.Redis) -> None:
    cache = _cache(redis_client, ttl_s=0)
    key = _digest() or ""
    assert cache.put(MODEL, key, RESULT) == 0
    assert cache.get(MODEL, key) is None
    assert list(redis_client.scan_iter(match="iq:result_cache*")) == []


def _prepared(settings: Settings, owner: str = "k1", **fields: object) -> Job:
    submission = Submission(question="What is it?", images=[A], **fields)  # type: ignore[arg-type]
    return prepare_job(submission, settings, owner=owner)


def test_submissions_get_a_digest_unless_they_opt_out() -> None:
    on = Settings(result_cache_ttl_s=60)
    assert _prepared(on).cache_digest
    assert _prepared(on).cache_digest == _prepared(on, timeout_s=30).cache_digest
    for opted_out in (False, "false"):
        assert _prepared(on, cache=opted_out).cache_digest == ""
    assert _prepared(on, cache="true").cache_digest == _prepared(on).cache_digest
    assert _prepared(Settings()).cache_digest == ""  # the cache is off by default
    # Scoped to the API key unless shared.
    assert _prepared(on, owner="k1").cache_digest != _prepared(on, owner="k2").cache_digest
    shared = Settings(result_cache_ttl_s=60, result_cache_shared=True)
    assert _prepared(shared, owner="k1").cache_digest == _prepared(shared, owner="k2").cache_digest


def test_cache_must_be_a_boolean() -> None:
    from internvl_queue.core.errors import ValidationFailed

    for wrong in ("maybe", "0", "1", "True", 1):
        with pytest.raises(ValidationFailed, match="cache must be true or false"):
            _prepared(Settings(result_cache_ttl_s=60), cache=wrong)


def test_a_hit_is_stored_succeeded_with_its_webhooks_and_counts(
    redis_client: redis.Redis,
) -> None:
    cache, store = _cache(redis_client), JobStore(redis_client, retention_s=3600)
    settings = Settings(
        result_cache_ttl_s=60,
        webhook_secrets="whsec_" + "QUJDREVGR0hJSktMTU5PUA==",
        webhook_allowed_cidrs="127.0.0.0/8",
    )
    job = _prepared(
        settings,
        webhook_url="http://127.0.0.1:9/hook",
        webhook_events=["job.started", "job.succeeded"],
    )
    assert answered_from_cache(cache, job, MODEL) is None  # nothing kept yet
    cache.put(MODEL, job.cache_digest, RESULT)
    answered = answered_from_cache(cache, job, MODEL)
    assert answered is not None
    stored = store.create_finished(answered, key=KeyClaim("iq:idem:test", "fp", 60))
    assert store.get(job.id) == stored
    assert stored.status is JobStatus.SUCCEEDED and stored.result is not None
    assert stored.result["answer"] == "a cat" and stored.result["cached"] is True
    assert stored.result["batch_size"] is None
    timings = stored.result["timings_ms"]
    assert timings["queued"] == timings["preprocess"] == timings["inference"] == 0
    assert 0 <= timings["total"] < 60_000
    # It started when it was created (it never waited) and finished when it was answered.
    assert stored.created_at == stored.started_at <= (stored.finished_at or 0)
    assert stored.expires_at == pytest.approx(time.time() + 3600, abs=60)
    # Never queued, no images, no broker message.
    assert redis_client.zscore(queued_key(), job.id) is None
    assert store.images(job.id) == []
    # Its webhooks, as a run would have produced them: started, then succeeded.
    events = [
        json.loads(redis_client.hget(event_key(e.decode()), "body") or b"{}")
        for e in redis_client.zrange(outbox_key(), 0, -1)
    ]
    assert [(e["type"], e["data"]["status"]) for e in events] == [
        ("job.started", "running"),
        ("job.succeeded", "succeeded"),
    ]
    assert events[1]["data"]["result"]["cached"] is True
    metrics = read_job_metrics(redis_client)
    assert metrics.submitted == 1 and metrics.result_cache_hits == 1
    assert metrics.finished == {("succeeded", ""): 1}
    assert not any(name == "batch_size" for name, _ in metrics.histograms)
    # The Idempotency-Key is bound in the same transaction.
    with pytest.raises(KeyAlreadyBound):
        store.create_finished(replace(answered, id="other"), key=KeyClaim("iq:idem:test", "fp", 60))
