"""The fixed-window submit limiter against a real Redis."""

from __future__ import annotations

import math
import time

import pytest
import redis

from internvl_queue.core.errors import TooManyRequests
from internvl_queue.core.ratelimit import RateLimiter


def test_the_limit_is_hit_with_a_sane_retry_after(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, limit=3, window_s=60)
    for _ in range(3):
        limiter.check("key1")
    with pytest.raises(TooManyRequests) as caught:
        limiter.check("key1")
    assert caught.value.code == "rate_limited" and caught.value.http_status == 429
    assert caught.value.retry_after is not None and 1 <= caught.value.retry_after <= 60
    # Seconds left in the current minute, within a second of what the clock says.
    assert abs(caught.value.retry_after - (60 - time.time() % 60)) <= 1.5
    with pytest.raises(TooManyRequests):
        limiter.check("key1")  # still refused


def test_retry_after_with_a_fixed_clock(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, limit=1, window_s=60, clock=lambda: 6000 * 60 + 15.2)
    limiter.check("k")
    with pytest.raises(TooManyRequests) as caught:
        limiter.check("k")
    assert caught.value.retry_after == math.ceil(60 - 15.2)
    late = RateLimiter(redis_client, limit=1, window_s=60, clock=lambda: 6000 * 60 + 59.99)
    late.check("late")
    with pytest.raises(TooManyRequests) as caught:
        late.check("late")
    assert caught.value.retry_after == 1  # never 0


def test_owners_have_separate_buckets(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, limit=2, window_s=60)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(TooManyRequests):
        limiter.check("a")
    limiter.check("b")
    limiter.check("b")
    limiter.check("")  # the anonymous bucket of an open API is its own too
    with pytest.raises(TooManyRequests):
        limiter.check("b")


def test_zero_disables_it(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, limit=0, window_s=60)
    for _ in range(50):
        limiter.check("a")
    assert list(redis_client.scan_iter(match="iq:rate:*")) == []


def test_counters_expire_with_their_window(redis_client: redis.Redis) -> None:
    RateLimiter(redis_client, limit=5, window_s=60).check("a")
    [key] = redis_client.scan_iter(match="iq:rate:*")
    assert 0 < redis_client.ttl(key) <= 61


def test_a_new_window_starts_a_new_count(redis_client: redis.Redis) -> None:
    limiter = RateLimiter(redis_client, limit=2, window_s=1)
    # Start just after a window boundary, so the three calls land in one window.
    time.sleep(math.ceil(time.time()) - time.time() + 0.01)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(TooManyRequests) as caught:
        limiter.check("a")
    assert caught.value.retry_after == 1
    time.sleep(math.ceil(time.time()) - time.time() + 0.01)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(TooManyRequests):
        limiter.check("a")


def test_bad_arguments() -> None:
    client = redis.Redis()  # not contacted
    with pytest.raises(ValueError):
        RateLimiter(client, limit=-1, window_s=60)
    with pytest.raises(ValueError):
        RateLimiter(client, limit=1, window_s=0)
    client.close()
