"""One way to open a Redis connection, so every process uses the same timeouts and pool."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

__all__ = ["HashFields", "connect"]

# What we give HSET. redis-py types its keys as a union and Mapping is invariant in its key type,
# so a dict[str, str] is refused; this alias says what the hash really holds.
HashFields = Mapping[Any, str]


def connect(url: str, *, max_connections: int = 128) -> redis.Redis:
    """A client whose pool makes a thread wait for a free connection instead of failing.

    redis-py's default pool raises "Too many connections" past 100, which a worker with hundreds
    of task threads reaches at once; a blocking pool queues them briefly instead.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,  # seconds to wait for a free connection
        socket_timeout=10,  # a dead Redis must not hang a request
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)
