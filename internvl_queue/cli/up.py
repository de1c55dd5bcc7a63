"""``internvl-queue up``: Redis (unless REDIS_URL is set), a GPU worker, a webhook worker and the
API, in one command, from any directory.

Its files live in the data directory (``core.data_dir``; ``--data-dir``), always as absolute
paths: Redis's AOF, ``service.json`` (how ``keys``, ``submit`` and ``doctor`` find this Redis and
API), a development webhook secret (made once when ``WEBHOOK_SECRETS`` is not set, so webhooks
work locally out of the box) and the demo model (``--demo``).

Children are supervised with the policy of ``cli.supervisor`` (the same as ``worker --gpus``'s):
each runs in its own session and dies with ``up`` (also when ``up`` is SIGKILLed); one that exits
on its own is restarted after a back-off, and one that keeps dying at once stops everything. Ctrl-C
(also during start-up) stops them in order: the API first (no new jobs), the GPU worker (warm
shutdown: the job in hand finishes, and its webhook events are staged), the webhook worker (the
deliveries in hand finish; the rest wait in the outbox), Redis last (flushing its append-only file).

One ``up`` owns a data directory at a time (a lock on ``up.lock`` in it, released by the kernel
when ``up`` dies): a second one refuses, naming the first one's pid, instead of running a second
Redis on the same append-only file. Unless ``INTERNVL_AUTH`` is set, the children run with
``INTERNVL_AUTH=open`` (development: no key needed until one is made). The Redis ``up`` starts has
a ``maxmemory`` (``INTERNVL_MAX_QUEUED_BYTES`` plus 1 GiB for records; 4 GiB with no byte cap)
and the ``noeviction`` policy, checked at start.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from ..core.redis_client import RedisTarget, connect
from ..core.settings import Settings
from ..core.signing import generate_secret
from ..core.workers import WorkerRegistry
from .local_service import RunningService
from .redis_server import RedisServer, start_redis
from .stop_request import StopRequest
from .supervisor import Child, Supervisor

__all__ = ["run_up"]

_SECRET_FILE = "webhook-secret"
_LOCK_FILE = "up.lock"
_RECORDS_HEADROOM_BYTES = 1024**3  # job records, events, keys beside the queued images
_NO_CAP_MAXMEMORY_BYTES = 4 * 1024**3


class DataDirBusy(Exception):
    """Raised when another ``up`` holds the data directory."""


def _say(message: str) -> None:
    print(f"[internvl-queue up] {message}", file=sys.stderr, flush=True)


def _child(name: str, args: list[str], env: dict[str, str], stop_timeout_s: float) -> Child:
    return Child(name, [sys.executable, "-m", "internvl_queue", *args], env, stop_timeout_s)


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Own ``data_dir`` while in the block; ``DataDirBusy`` naming the owner's pid if another
    process does. The kernel drops the lock when its holder dies, however it dies."""
    descriptor = os.open(data_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DataDirBusy(
                f"another internvl-queue up (pid {owner}) is running on {data_dir}: stop it "
                "first, or pass --data-dir to run a second service"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def redis_maxmemory(settings: Settings) -> int:
    """The ``maxmemory`` of the Redis ``up`` starts."""
    if settings.max_queued_bytes == 0:
        return _NO_CAP_MAXMEMORY_BYTES
    return settings.max_queued_bytes + _RECORDS_HEADROOM_BYTES


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As gunicorn binds: connections of a server that just stopped (TIME_WAIT) do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def development_secret(data_dir: Path) -> tuple[str, bool]:
    """The data directory's webhook signing secret, made on first use; (secret, made now)."""
    path = data_dir / _SECRET_FILE
    if path.is_file():
        return path.read_text().strip(), False
    secret = generate_secret()
    # Readable by this user only: whoever holds it can forge events.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    return secret, True


def run_up(host: str, port: int, data_dir: Path, *, demo: bool = False) -> int:
    stop = StopRequest()  # first: a Ctrl-C during start-up stops what was started so far
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with data_dir_lock(data_dir):
            return _run_up(host, port, data_dir, demo, stop)
    except DataDirBusy as exc:
        _say(str(exc))
        return 1


def _run_up(host: str, port: int, data_dir: Path, demo: bool, stop: StopRequest) -> int:
    if not _port_free(host, port):
        _say(f"port {port} on {host} is in use: stop what runs there, or pass --port")
        return 1
    env = dict(os.environ, INTERNVL_DATA_DIR=str(data_dir))
    if demo:
        env["INTERNVL_MODEL"] = "demo"
    if not env.get("INTERNVL_AUTH"):
        env["INTERNVL_AUTH"] = "open"  # development: no key needed until one is made
    settings = Settings.from_env(env)  # a bad setting stops here, in one sentence

    if not env.get("WEBHOOK_SECRETS"):
        secret, made = development_secret(data_dir)
        env["WEBHOOK_SECRETS"] = secret
        where = data_dir / _SECRET_FILE
        _say(
            f"webhook signing secret ({'made' if made else 'kept'} in {where}; set "
            f"WEBHOOK_SECRETS to use your own): {secret}"
        )

    redis_server: RedisServer | None = None
    if env.get("REDIS_SENTINELS"):
        env.setdefault("REDIS_URL", settings.redis_url)
        _say(f"using Redis at {settings.redis_target.describe()}")
    elif env.get("REDIS_URL"):
        _say(f"using Redis at {env['REDIS_URL']}")
    else:
        limit = redis_maxmemory(settings)
        try:
            redis_server = start_redis(data_dir / "redis", maxmemory_bytes=limit)
        except RuntimeError as exc:
            _say(str(exc))
            return 1
        env["REDIS_URL"] = redis_server.url
        _say(
            f"started redis-server on port {redis_server.port} (AOF in {redis_server.data_dir}, "
            f"maxmemory {limit // 1024**2} MiB, noeviction)"
        )
    try:
        return _supervise(host, port, data_dir, env, settings.model, stop)
    finally:
        if redis_server is not None:
            _say("stopping redis-server")
            redis_server.stop()
        _say("stopped")


def _supervise(
    host: str, port: int, data_dir: Path, env: dict[str, str], model: str, stop: StopRequest
) -> int:
    api_url = f"http://{host}:{port}"
    supervisor = Supervisor(_say)
    # Stopped in this order: the API first (no new jobs), Redis (after this returns) last.
    # A warm shutdown waits for the job in hand; an attempt lasts at most WEBHOOK_TIMEOUT_S.
    order = [
        _child("api", ["api", "--host", host, "--port", str(port)], env, 15),
        _child("worker", ["worker"], env, 120),
        _child("webhook worker", ["webhook-worker"], env, 60),
    ]
    try:
        for child in reversed(order):
            if not stop.requested:
                supervisor.add(child)
        if stop.requested:
            return 0
        RunningService(os.getpid(), env["REDIS_URL"], api_url, model).write(data_dir)
        _say(f"API on {api_url}; the worker is loading {model}. Ctrl-C stops everything")
        registry = WorkerRegistry(
            connect(RedisTarget.from_env(env, env["REDIS_URL"]), max_connections=1)
        )
        exit_code = 0
        announced = False
        while not stop.requested:
            if supervisor.poll():
                _say("the service cannot run without it; stopping the rest")
                exit_code = 1
                break
            if not announced and _ready(registry):
                announced = True
                _say(f"ready on {api_url} (try: internvl-queue submit IMAGE -q QUESTION --wait)")
            time.sleep(0.2)
        registry.redis.connection_pool.disconnect()
        return exit_code
    finally:
        supervisor.stop(order)
        RunningService.remove(data_dir)


def _ready(registry: WorkerRegistry) -> bool:
    """A worker has its model loaded (asked of Redis: polling /readyz would fill the access log)."""
    try:
        return bool(registry.ready())
    except redis.RedisError:
        return False
