"""Can a worker reach Redis, and will Redis keep what the service stores there?

Read from ``INFO``, not ``CONFIG GET``: managed Redis services often disable CONFIG, never INFO.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from ...core.redis_client import RedisTarget
from ..local_service import running_service
from .report import Check, Level, human_bytes

__all__ = ["check_redis", "check_redis_target", "redacted", "redis_source"]


def redis_source() -> str:
    """Where ``local_service.redis_url()`` took its URL from, in words."""
    if os.environ.get("REDIS_SENTINELS"):
        return "REDIS_SENTINELS"
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
    return _server_checks(client, shown)


def check_redis_target(target: RedisTarget, source: str, timeout_s: float = 3.0) -> list[Check]:
    """``check_redis``, or with sentinels: what they say (primary, replicas, which of them
    answer), then the same checks on the primary they name."""
    if not target.uses_sentinel:
        return check_redis(target.url, source, timeout_s)
    sentinel = target.sentinel(timeout_s)
    try:
        return _sentinel_checks(target, sentinel, source, timeout_s)
    finally:
        sentinel.close()


def _sentinel_checks(
    target: RedisTarget, sentinel: Sentinel, source: str, timeout_s: float
) -> list[Check]:
    answered: list[str] = []
    silent: list[str] = []
    primary: tuple[str, int] | None = None
    replicas: list[str] = []
    for (host, port), node in zip(target.sentinels, sentinel.sentinels, strict=True):
        try:
            state: dict[str, Any] = node.sentinel_master(target.master_name)  # type: ignore[assignment]
            found: list[dict[str, Any]] = node.sentinel_slaves(target.master_name)
        except (redis.RedisError, OSError) as exc:
            silent.append(f"{host}:{port} ({_reason(exc)})")
            continue
        answered.append(f"{host}:{port}")
        if primary is None:
            primary = (str(state["ip"]), int(state["port"]))
            replicas = [
                f"{r['ip']}:{r['port']} ({'down' if r.get('is_sdown') else 'online'})"
                for r in found
            ]
    if primary is None:
        return [
            Check(
                "Redis Sentinel",
                Level.FAIL,
                f"no sentinel of {target.describe()} names the primary: {'; '.join(silent)}",
            )
        ]
    checks = [
        Check(
            "Redis Sentinel",
            Level.WARN if silent or not replicas else Level.OK,
            f"primary {target.master_name!r} at {primary[0]}:{primary[1]}; replicas: "
            f"{', '.join(replicas) or 'none (a failover has nowhere to go)'}; sentinels "
            f"answering: {', '.join(answered)}"
            + (f"; not answering: {'; '.join(silent)}" if silent else ""),
        )
    ]
    creds = {k: v for k, v in target.primary_credentials().items() if v is not None}
    client = sentinel.master_for(
        target.master_name,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        **creds,
    )
    return checks + _server_checks(client, f"the primary {primary[0]}:{primary[1]} ({source})")


def _server_checks(client: redis.Redis, shown: str) -> list[Check]:
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
