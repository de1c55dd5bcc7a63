"""``internvl-queue up``: Redis (unless REDIS_URL is set), a GPU worker, a webhook worker and the
API, in one command, from any directory.

Its files live in the data directory (``core.data_dir``; ``--data-dir``), always as absolute
paths: Redis's AOF, ``service.json`` (how ``keys``, ``submit`` and ``doctor`` find this Redis and
API), a development webhook secret (made once when ``WEBHOOK_SECRETS`` is not set, so webhooks
work locally out of the box) and the demo model (``--demo``).

Each child runs in its own session, so Ctrl-C reaches only this supervisor, which then stops them
in order: the API first (no new jobs), the GPU worker (warm shutdown: the job in hand finishes,
and its webhook events are staged), the webhook worker (the deliveries in hand finish; the rest
wait in the outbox), Redis last (flushing its append-only file). If any child exits on its own,
everything is stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from ..core.redis_client import connect
from ..core.signing import generate_secret
from ..core.workers import WorkerRegistry
from .local_service import RunningService
from .redis_server import RedisServer, start_redis
from .stop_request import StopRequest

__all__ = ["run_up"]

_SECRET_FILE = "webhook-secret"


def _say(message: str) -> None:
    print(f"[internvl-queue up] {message}", file=sys.stderr, flush=True)


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "internvl_queue", *args]
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(name: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        return
    _say(f"stopping {name}")
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        _say(f"{name} did not stop in {timeout:.0f} s; killing it")
        process.kill()
        process.wait()


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
    data_dir = data_dir.expanduser().resolve()
    if not _port_free(host, port):
        _say(f"port {port} on {host} is in use: stop what runs there, or pass --port")
        return 1
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, INTERNVL_DATA_DIR=str(data_dir))
    if demo:
        env["INTERNVL_MODEL"] = "demo"

    if not env.get("WEBHOOK_SECRETS"):
        secret, made = development_secret(data_dir)
        env["WEBHOOK_SECRETS"] = secret
        where = data_dir / _SECRET_FILE
        _say(
            f"webhook signing secret ({'made' if made else 'kept'} in {where}; set "
            f"WEBHOOK_SECRETS to use your own): {secret}"
        )

    redis_server: RedisServer | None = None
    if env.get("REDIS_URL"):
        _say(f"using Redis at {env['REDIS_URL']}")
    else:
        try:
            redis_server = start_redis(data_dir / "redis")
        except RuntimeError as exc:
            _say(str(exc))
            return 1
        env["REDIS_URL"] = redis_server.url
        _say(f"started redis-server on port {redis_server.port} (AOF in {redis_server.data_dir})")

    stop = StopRequest()
    api_url = f"http://{host}:{port}"
    worker = _spawn(["worker"], env)
    webhooks = _spawn(["webhook-worker"], env)
    api = _spawn(["api", "--host", host, "--port", str(port)], env)
    RunningService(os.getpid(), env["REDIS_URL"], api_url).write(data_dir)
    model = env.get("INTERNVL_MODEL") or "OpenGVLab/InternVL3-1B-hf"
    _say(f"API on {api_url}; the worker is loading {model}. Ctrl-C stops everything")
    children = {"api": api, "worker": worker, "webhook worker": webhooks}
    registry = WorkerRegistry(connect(env["REDIS_URL"], max_connections=1))
    exit_code = 0
    announced = False
    while not stop.requested:
        for name, process in children.items():
            if process.poll() is not None:
                _say(f"{name} exited with code {process.returncode}; stopping the rest")
                exit_code = process.returncode or 1
                stop.requested = True
        if not announced and not stop.requested and _ready(registry):
            announced = True
            _say(f"ready on {api_url} (try: internvl-queue submit IMAGE -q QUESTION --wait)")
        time.sleep(0.2)

    registry.redis.connection_pool.disconnect()
    _stop("api", api, timeout=15)
    # A warm shutdown waits for the job in hand; give it time.
    _stop("worker", worker, timeout=120)
    # An attempt lasts at most about twice WEBHOOK_TIMEOUT_S (connect, then read).
    _stop("webhook worker", webhooks, timeout=60)
    RunningService.remove(data_dir)
    if redis_server is not None:
        _say("stopping redis-server")
        redis_server.stop()
    _say("stopped")
    return exit_code


def _ready(registry: WorkerRegistry) -> bool:
    """A worker has its model loaded (asked of Redis: polling /readyz would fill the access log)."""
    try:
        return bool(registry.ready())
    except redis.RedisError:
        return False
