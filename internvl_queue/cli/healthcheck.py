"""``internvl-queue healthcheck worker|webhook-worker``: is this container's process serving?

Made for container health checks (docker compose runs it inside the container every few seconds):
it prints one line saying why, and exits 0 when healthy, 1 when not.

- ``worker``: a worker of this host has a live heartbeat in Redis in the ``ready`` state (model
  loaded) whose Celery consumer is connected to the broker (``consuming``: after a Redis restart
  the process and its heartbeat are back before its consumer is, and until then it takes no
  job). A worker names its heartbeat ``"<host name>:<pid>"``, publishes it from
  the start of loading (``loading``; ``failed`` if the model cannot load) and refreshes it every
  few seconds; a hung or dead one lets it expire. In a container the host name is the
  container's own, so this asks "is the worker of *this* container ready", not "is some worker
  somewhere up".
- ``webhook-worker``: Redis answers. Everything the webhook worker does goes through Redis, and if
  its process dies, so does the container.
"""

from __future__ import annotations

import socket
import sys
from typing import TextIO

import redis
from redis.sentinel import SentinelConnectionPool

from ..core.redis_client import RedisTarget, connect
from ..core.workers import WorkerRegistry, WorkerState
from .local_service import redis_target

__all__ = ["run_healthcheck", "webhook_worker_health", "worker_health"]

# A health check must answer within the check's own timeout, even if Redis hangs.
_TIMEOUT_S = 3.0


def worker_health(client: redis.Redis, host: str) -> tuple[bool, str]:
    """(healthy, why): whether a worker named ``<host>:<pid>`` has a live ``ready`` heartbeat.

    Read-only (a health check runs every few seconds and must change nothing).
    """
    ready: list[str] = []
    other: list[str] = []
    for worker in WorkerRegistry(client).live(forget=False):
        if not worker.name.startswith(f"{host}:"):
            continue
        if worker.state is WorkerState.READY and worker.consuming is False:
            other.append(
                f"{worker.name} has {worker.model} loaded but its broker consumer is not "
                "connected (reconnecting to Redis): it takes no job"
            )
        elif worker.state is WorkerState.READY:
            ready.append(f"{worker.name} ({worker.model} on {worker.device})")
        elif worker.state is WorkerState.FAILED:
            other.append(f"{worker.name} could not load {worker.model}: {worker.error or '?'}")
        else:
            other.append(f"{worker.name} is {worker.state.value} {worker.model}")
    if ready:
        return True, f"worker ready: {', '.join(ready)}"
    if other:
        return False, f"no worker of host {host} is ready: {'; '.join(other)}"
    return False, (
        f"no live worker heartbeat from host {host} in Redis: the worker is starting, or it is "
        "not running (see its log)"
    )


def webhook_worker_health(client: redis.Redis) -> tuple[bool, str]:
    client.ping()
    return True, "webhook worker: Redis answers"


def _where(client: redis.Redis) -> str:
    """host:port/db of the client, without any password the URL may hold."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        return f"primary {pool.service_name!r}"
    kwargs = pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def run_healthcheck(
    kind: str, url: str | None = None, host: str | None = None, out: TextIO = sys.stdout
) -> int:
    """Print one line and return 0 (healthy) or 1; ``url`` defaults to the service's Redis."""
    target = RedisTarget(url) if url else redis_target()
    client = connect(target, max_connections=2, socket_timeout_s=_TIMEOUT_S)
    try:
        if kind == "worker":
            healthy, why = worker_health(client, host or socket.gethostname())
        else:
            healthy, why = webhook_worker_health(client)
    except redis.RedisError as exc:
        healthy, why = False, f"Redis at {_where(client)} does not answer ({exc}): check REDIS_URL"
    finally:
        client.close()
    print(why, file=out)
    return 0 if healthy else 1
