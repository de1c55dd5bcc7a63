"""``internvl-queue healthcheck worker|webhook-worker``: is this container's process serving?

Made for container health checks (docker compose runs it inside the container every few seconds):
it prints one line saying why, and exits 0 when healthy, 1 when not.

- ``worker``: a worker of this host has a live heartbeat in Redis in the ``ready`` state (model
  loaded, taking jobs). A worker names its heartbeat ``"<host name>:<pid>"``, publishes it from
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

from ..core.keys import worker_key, workers_key
from ..core.workers import WorkerState
from .local_service import redis_url

__all__ = ["KINDS", "run_healthcheck", "webhook_worker_health", "worker_health"]

# A health check must answer within the check's own timeout, even if Redis hangs.
_TIMEOUT_S = 3.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def worker_health(client: redis.Redis, host: str) -> tuple[bool, str]:
    """(healthy, why): whether a worker named ``<host>:<pid>`` has a live ``ready`` heartbeat.

    Read-only (a health check runs every few seconds and must change nothing): a heartbeat is
    live while its hash exists, since the hash expires with it.
    """
    names = sorted(_text(n) for n in client.smembers(workers_key()))
    ready: list[str] = []
    other: list[str] = []
    for name in (n for n in names if n.startswith(f"{host}:")):
        model, device, state, error = client.hmget(
            worker_key(name), ["model", "device", "state", "error"]
        )
        if model is None:
            continue  # expired
        state_text = _text(state or WorkerState.READY.value)
        if state_text == WorkerState.READY.value:
            ready.append(f"{name} ({_text(model)} on {_text(device or b'?')})")
        elif state_text == WorkerState.FAILED.value:
            other.append(f"{name} could not load {_text(model)}: {_text(error or b'?')}")
        else:
            other.append(f"{name} is {state_text} {_text(model)}")
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


KINDS = ("worker", "webhook-worker")


def _where(client: redis.Redis) -> str:
    """host:port/db of the client, without any password the URL may hold."""
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def run_healthcheck(
    kind: str, url: str | None = None, host: str | None = None, out: TextIO = sys.stdout
) -> int:
    """Print one line and return 0 (healthy) or 1; ``url`` defaults to the service's Redis."""
    client = redis.Redis.from_url(
        url or redis_url(), socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
    )
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
