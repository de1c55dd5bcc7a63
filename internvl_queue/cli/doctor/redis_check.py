"""Can a worker reach Redis, and will Redis keep what the service stores there?

Read from ``INFO``, not ``CONFIG GET``: managed Redis services often disable CONFIG, never INFO.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..local_service import running_service
from .report import Check, Level, human_bytes

__all__ = ["check_redis", "redacted", "redis_source"]


def redis_source() -> str:
    """Where ``local_service.redis_url()`` took its URL from, in words."""
    if os.environ.get("REDIS_URL"):
        return "REDIS_URL"
    if running_service() is not None:
        return "the running internvl-queue up"
    return "the default; set REDIS_URL"


def redacted(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_redis(url: str, source: str, timeout_s: float = 3.0) -> list[Check]:
    shown = f"{redacted(url)} ({source})"
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # one try: an unreachable Redis is reported at once
        )
    except ValueError as exc:
        return [Check("Redis", Level.FAIL, f"{shown} is not a Redis URL ({exc}): fix REDIS_URL")]
    try:
        info = client.info()
    except redis.AuthenticationError as exc:
        return [
            Check("Redis", Level.FAIL, f"{shown} refused us ({_reason(exc)}): check its password")
        ]
    except (redis.RedisError, OSError) as exc:
        return [
            Check(
                "Redis",
                Level.FAIL,
                f"cannot reach {shown}: {_reason(exc)}; start Redis "
                "(internvl-queue up runs one) or set REDIS_URL to yours",
            )
        ]
    finally:
        client.close()
    return [
        Check(
            "Redis", Level.OK, f"{shown}: Redis {info.get('redis_version', '(unknown version)')}"
        ),
        _aof(info),
        _eviction(info),
    ]


def _aof(info: dict[str, object]) -> Check:
    enabled = info.get("aof_enabled")
    if enabled is None:
        return Check("Redis AOF", Level.WARN, "unknown (INFO persistence says nothing)")
    if int(str(enabled)):
        return Check("Redis AOF", Level.OK, "on: queued jobs and records survive a restart")
    return Check(
        "Redis AOF",
        Level.WARN,
        "off: a Redis restart loses every queued job and record; turn it on (appendonly yes, "
        "appendfsync everysec)",
    )


def _eviction(info: dict[str, object]) -> Check:
    limit = int(str(info.get("maxmemory", 0)))
    policy = str(info.get("maxmemory_policy", "unknown"))
    if limit == 0:
        return Check("Redis memory", Level.OK, "no maxmemory limit, nothing is evicted")
    if policy == "noeviction":
        return Check("Redis memory", Level.OK, f"maxmemory {human_bytes(limit)}, policy noeviction")
    return Check(
        "Redis memory",
        Level.WARN,
        f"maxmemory {human_bytes(limit)} with maxmemory-policy {policy}: when full, Redis "
        "evicts job records and queued jobs; set maxmemory-policy noeviction",
    )


def _reason(exc: BaseException) -> str:
    return str(exc).rstrip(".") or type(exc).__name__
