"""One way to open a Redis connection, so every process uses the same timeouts and pool.

Redis is either one server named by ``REDIS_URL``, or a primary that Redis Sentinel names
(``REDIS_SENTINELS`` + ``REDIS_MASTER_NAME``): then every connection asks a sentinel for the
current primary when it (re)connects, so a failover needs no restart. In both cases the database
number, username and password of ``REDIS_URL`` are the primary's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel, SentinelConnectionPool

__all__ = ["HashFields", "RedisTarget", "connect", "parse_sentinels"]

# What we give HSET. redis-py types its keys as a union and Mapping is invariant in its key type,
# so a dict[str, str] is refused; this alias says what the hash really holds.
HashFields = Mapping[Any, str]

# A sentinel that does not answer is skipped for the next one: wait for it briefly.
_SENTINEL_TIMEOUT_S = 2.0


def parse_sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (``[v6]:port`` too) as pairs; ValueError with one sentence."""
    found: list[tuple[str, int]] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"REDIS_SENTINELS: {item!r} is not host:port")
        found.append((host, int(port)))
    return tuple(found)


@dataclass(frozen=True)
class RedisTarget:
    """Where the service's Redis is: ``url`` alone, or the primary the sentinels name."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    sentinel_password: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str], url: str) -> RedisTarget:
        """The sentinel variables of ``environ`` around ``url`` (for the CLI, which has no
        Settings); ValueError with one sentence when they are wrong."""
        target = cls(
            url,
            parse_sentinels(environ.get("REDIS_SENTINELS", "")),
            environ.get("REDIS_MASTER_NAME", "").strip(),
            environ.get("REDIS_SENTINEL_PASSWORD", ""),
        )
        target.check()
        return target

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.sentinels)

    def check(self) -> None:
        """ValueError with one sentence naming the variables when the target cannot work."""
        if self.sentinels and not self.master_name:
            raise ValueError("REDIS_SENTINELS is set: REDIS_MASTER_NAME must name the primary")
        if self.master_name and not self.sentinels:
            raise ValueError("REDIS_MASTER_NAME is set: REDIS_SENTINELS must list the sentinels")
        try:
            parsed = parse_url(self.url)
        except ValueError as exc:
            raise ValueError(f"REDIS_URL is not a Redis URL ({exc})") from None
        if self.sentinels and parsed.get("connection_class") not in (None, redis.Connection):
            raise ValueError(
                "REDIS_URL must be redis:// (not TLS or a socket) with REDIS_SENTINELS"
            )

    def describe(self) -> str:
        """For logs and ``doctor``: no password."""
        if not self.uses_sentinel:
            return _redacted(self.url)
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        db = self.primary_credentials()["db"]
        return f"primary {self.master_name!r} via sentinels {hosts} (db {db})"

    def sentinel(self, timeout_s: float = _SENTINEL_TIMEOUT_S, **primary: Any) -> Sentinel:
        """A redis-py Sentinel whose ``master_for`` gives clients on the current primary."""
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
        }
        if self.sentinel_password:
            sentinel_kwargs["password"] = self.sentinel_password
        return Sentinel(list(self.sentinels), sentinel_kwargs=sentinel_kwargs, **primary)

    def primary_credentials(self) -> dict[str, Any]:
        """db, username and password of REDIS_URL: the primary's, whoever it is."""
        parsed = parse_url(self.url)
        return {
            "db": int(parsed.get("db", 0) or 0),
            "username": parsed.get("username"),
            "password": parsed.get("password"),
        }

    def celery_broker_url(self) -> str:
        """kombu's form: ``sentinel://[:password@]host:port/db`` per sentinel, joined by ``;``.
        kombu takes the first URL's database and password for the primary."""
        if not self.uses_sentinel:
            return self.url
        primary = self.primary_credentials()
        auth = ""
        if primary["password"]:
            auth = f"{quote(primary['username'] or '', safe='')}:"
            auth += f"{quote(primary['password'], safe='')}@"
        return ";".join(
            f"sentinel://{auth}{_host(h)}:{p}/{primary['db']}" for h, p in self.sentinels
        )

    def celery_transport_options(self) -> dict[str, Any]:
        """What kombu's sentinel transport needs besides the URL (nothing without sentinels)."""
        if not self.uses_sentinel:
            return {}
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": _SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
        }
        if self.sentinel_password:
            sentinel_kwargs["password"] = self.sentinel_password
        return {"master_name": self.master_name, "sentinel_kwargs": sentinel_kwargs}


class BlockingSentinelConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (every new connection goes to the primary a sentinel names now; a
    connection to a demoted primary is dropped) with the blocking pool's waiting for a free
    connection. MRO: the sentinel pool's ``__init__`` passes its kwargs on to the blocking one."""

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        if inuse_connections:
            # A full close (``get_master_address`` drops only idle connections when the primary
            # moves): the connections to the sentinels are this pool's too.
            for node in self.sentinel_manager.sentinels:
                node.connection_pool.disconnect()


def connect(
    target: str | RedisTarget, *, max_connections: int = 128, socket_timeout_s: float = 10
) -> redis.Redis:
    """A client whose pool makes a thread wait for a free connection instead of failing.

    redis-py's default pool raises "Too many connections" past 100, which a worker with hundreds
    of task threads reaches at once; a blocking pool queues them briefly instead. With sentinels,
    the same client object follows a failover: a command that fails on the old primary is retried
    by redis-py on a fresh connection, which asks the sentinels for the new one.
    """
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": 30,  # seconds to wait for a free connection
        "socket_timeout": socket_timeout_s,  # a dead Redis must not hang a request
        "socket_connect_timeout": min(5, socket_timeout_s),
        "health_check_interval": 30,
    }
    if isinstance(target, str):
        target = RedisTarget(target)
    if not target.uses_sentinel:
        return redis.Redis(
            connection_pool=redis.BlockingConnectionPool.from_url(target.url, **options)
        )
    primary = {k: v for k, v in target.primary_credentials().items() if v is not None}
    return target.sentinel().master_for(
        target.master_name,
        connection_pool_class=BlockingSentinelConnectionPool,
        **primary,
        **options,
    )


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _redacted(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=netloc))
