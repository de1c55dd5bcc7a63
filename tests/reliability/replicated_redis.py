"""A real primary and one replica (``replicaof``) on free ports, and a way to pause the replica."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from internvl_queue.cli.redis_server import RedisServer, start_redis
from tests.conftest import IN_CI

__all__ = ["ReplicatedRedis", "replicated_redis"]


@dataclass
class ReplicatedRedis:
    primary: RedisServer
    replica: RedisServer

    def primary_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.primary.url)

    def replica_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.replica.url)

    @contextmanager
    def replica_paused(self) -> Iterator[None]:
        """SIGSTOP the replica: it takes nothing and acknowledges nothing until SIGCONT."""
        os.kill(self.replica.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.replica.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.replica.stop()
        self.primary.stop()


@contextmanager
def replicated_redis(tmp_path: Path) -> Iterator[ReplicatedRedis]:
    try:
        primary = start_redis(tmp_path / "primary", persistent=False)
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(f"no Redis for the tests under CI: {exc}")
        pytest.skip(f"needs Redis: redis-server could not be started ({exc})")
    try:
        replica = start_redis(tmp_path / "replica", persistent=False, replica_of=primary.port)
    except BaseException:
        primary.stop()
        raise
    pair = ReplicatedRedis(primary, replica)
    try:
        yield pair
    finally:
        pair.stop()
