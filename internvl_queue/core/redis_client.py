"""One way to open a Redis connection, so every process uses the same timeouts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

__all__ = ["HashFields", "connect"]

# What we give HSET. redis-py types its keys as a union and Mapping is invariant in its key type,
# so a dict[str, str] is refused; this alias says what the hash really holds.
HashFields = Mapping[Any, str]


def connect(url: str) -> redis.Redis:
    # Bytes in, bytes out: images are binary. Timeouts keep a dead Redis from hanging a request.
    return redis.Redis.from_url(
        url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
    )
