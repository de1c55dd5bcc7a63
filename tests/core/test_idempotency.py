from __future__ import annotations

import pytest
import redis

from internvl_queue.core.errors import BadRequest
from internvl_queue.core.idempotency import IdempotencyStore, ReservationOutcome, check_key


def test_reserve_then_replay_mismatch_and_in_flight(redis_client: redis.Redis) -> None:
    store = IdempotencyStore(redis_client, ttl_s=100)
    assert store.reserve("k1", "abc", "fp1").outcome is ReservationOutcome.NEW
    assert store.reserve("k1", "abc", "fp1").outcome is ReservationOutcome.IN_FLIGHT
    assert store.reserve("k1", "abc", "fp2").outcome is ReservationOutcome.MISMATCH
    store.complete("k1", "abc", "fp1", "job-1")
    replay = store.reserve("k1", "abc", "fp1")
    assert (replay.outcome, replay.job_id) == (ReservationOutcome.REPLAY, "job-1")
    assert store.reserve("k1", "abc", "fp2").outcome is ReservationOutcome.MISMATCH
    [name] = redis_client.keys("iq:idem:*")
    assert 90 < redis_client.ttl(name) <= 100
    assert b"abc" not in name  # the caller's key is hashed


def test_keys_are_scoped_per_api_key_and_release_frees_them(redis_client: redis.Redis) -> None:
    store = IdempotencyStore(redis_client, ttl_s=100)
    assert store.reserve("k1", "abc", "fp").outcome is ReservationOutcome.NEW
    assert store.reserve("k2", "abc", "other").outcome is ReservationOutcome.NEW
    store.release("k1", "abc")
    assert store.reserve("k1", "abc", "different").outcome is ReservationOutcome.NEW


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "tab\t", "é"])
def test_unusable_keys_are_refused(key: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_key(key)
    assert caught.value.code == "invalid_idempotency_key"


def test_usable_key_passes() -> None:
    assert check_key("order-42:attempt/1") == "order-42:attempt/1"
