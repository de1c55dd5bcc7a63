"""``internvl-queue up``: Redis (unless REDIS_URL is set), a GPU worker, a webhook worker and the
API, in one command.

Each child runs in its own session, so Ctrl-C reaches only this supervisor, which then stops them
in order: the API first (no new jobs), the GPU worker (warm shutdown: the job in hand finishes,
and its webhook events are staged), the webhook worker (the deliveries in hand finish; the rest
wait in the outbox), Redis last (flushing its append-only file). If any child exits on its own,
everything is stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .redis_server import RedisServer, start_redis
from .stop_request import StopRequest

__all__ = ["run_up"]


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


def run_up(host: str, port: int, data_dir: Path) -> int:
    env = dict(os.environ)
    redis_server: RedisServer | None = None
    if env.get("REDIS_URL"):
        _say(f"using Redis at {env['REDIS_URL']}")
    else:
        redis_server = start_redis(data_dir / "redis")
        env["REDIS_URL"] = redis_server.url
        _say(f"started redis-server on port {redis_server.port} (AOF in {redis_server.data_dir})")

    stop = StopRequest()

    worker = _spawn(["worker"], env)
    webhooks = _spawn(["webhook-worker"], env)
    api = _spawn(["api", "--host", host, "--port", str(port)], env)
    model = env.get("INTERNVL_MODEL", "the default model")
    _say(f"API on http://{host}:{port}; the worker is loading {model}. Ctrl-C stops everything")
    children = {"api": api, "worker": worker, "webhook worker": webhooks}
    exit_code = 0
    while not stop.requested:
        for name, process in children.items():
            if process.poll() is not None:
                _say(f"{name} exited with code {process.returncode}; stopping the rest")
                exit_code = process.returncode or 1
                stop.requested = True
        time.sleep(0.2)

    _stop("api", api, timeout=15)
    # A warm shutdown waits for the job in hand; give it time.
    _stop("worker", worker, timeout=120)
    # An attempt lasts at most about twice WEBHOOK_TIMEOUT_S (connect, then read).
    _stop("webhook worker", webhooks, timeout=60)
    if redis_server is not None:
        _say("stopping redis-server")
        redis_server.stop()
    _say("stopped")
    return exit_code
