"""Start a private ``redis-server`` child (for ``internvl-queue up`` and the test suite).

It dies with its parent (``supervisor.spawn_tied``). With ``maxmemory_bytes`` it runs with that
``maxmemory`` and the ``noeviction`` policy, checked once it answers: a full Redis refuses writes
(submits get 503) rather than silently evicting job records, images or API keys.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from .supervisor import spawn_tied

__all__ = ["RedisServer", "free_port", "start_redis"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    persistent: bool = True

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        """``kill -9``: Redis dies at once, as in a crash (what it had written to its AOF stays)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def restart(self, timeout: float = 10) -> None:
        """Start Redis again on the same port and directory (it replays its AOF)."""
        assert self.process.poll() is not None, "restart() needs a stopped Redis"
        self.process = start_redis(
            self.data_dir, persistent=self.persistent, port=self.port, timeout=timeout
        ).process

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis flushes the AOF and exits cleanly
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(
    data_dir: Path,
    *,
    persistent: bool = True,
    port: int | None = None,
    timeout: float = 10,
    maxmemory_bytes: int | None = None,
    replica_of: int | None = None,
) -> RedisServer:
    """Run redis-server on a loopback port (a free one by default), files in ``data_dir``; wait
    until it answers. ``persistent``: an append-only file, fsynced every second. ``replica_of``:
    the port of a loopback primary it replicates (``replicaof``); waited for until in sync."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: run scripts/setup.sh (it installs it), "
            "or set REDIS_URL to a Redis you run"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes" if persistent else "no",
        "--appendfsync",
        "everysec",
        "--logfile",
        str(data_dir / "redis.log"),
    ]
    if maxmemory_bytes is not None:
        args += ["--maxmemory", str(maxmemory_bytes), "--maxmemory-policy", "noeviction"]
    if replica_of is not None:
        args += ["--replicaof", "127.0.0.1", str(replica_of)]
    process = spawn_tied(args, os.environ)
    server = RedisServer(process, port, data_dir, persistent)
    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            if replica_of is not None and not _in_sync(client):
                raise redis.ConnectionError("not in sync with its primary yet")
            if maxmemory_bytes is not None:
                _check_memory_limit(client, maxmemory_bytes, server)
            return server
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                log = (data_dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start:\n{log}") from None
            time.sleep(0.05)
        finally:
            client.close()


def _check_memory_limit(client: redis.Redis, maxmemory_bytes: int, server: RedisServer) -> None:
    """Refuse a Redis that did not take the limit (an old version, a config that overrides it)."""
    found = {_text(k): _text(v) for k, v in client.config_get("maxmemory*").items()}
    policy, limit = found.get("maxmemory-policy", ""), int(found.get("maxmemory") or 0)
    if policy != "noeviction" or limit != maxmemory_bytes:
        server.stop()
        raise RuntimeError(
            f"redis-server runs with maxmemory {limit} and policy {policy!r} instead of "
            f"{maxmemory_bytes} and 'noeviction': check its version (6 or later)"
        )


def _in_sync(replica: redis.Redis) -> bool:
    info = replica.info("replication")
    return bool(info.get("master_link_status") == "up" and not info.get("master_sync_in_progress"))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
