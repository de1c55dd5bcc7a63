"""A Redis primary, one replica and three sentinels on free loopback ports, as real processes.

Debian's ``redis-server`` runs as a sentinel with ``redis-server sentinel.conf --sentinel``. The
sentinels judge a primary down after ``DOWN_AFTER_MS`` without an answer, so a SIGKILLed primary
is replaced within a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from internvl_queue.cli.redis_server import RedisServer, free_port, start_redis
from internvl_queue.cli.supervisor import spawn_tied
from internvl_queue.core.redis_client import RedisTarget

__all__ = ["MASTER_NAME", "SentinelCluster", "sentinel_cluster"]

MASTER_NAME = "iq-primary"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


@dataclass
class SentinelCluster:
    servers: list[RedisServer]
    sentinel_ports: list[int]
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def sentinels_setting(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def target(self, db: int = 0) -> RedisTarget:
        # The URL's host and port are never used with sentinels: a closed port says so.
        return RedisTarget(
            f"redis://127.0.0.1:1/{db}",
            tuple(("127.0.0.1", p) for p in self.sentinel_ports),
            MASTER_NAME,
        )

    def env(self, db: int = 0) -> dict[str, str]:
        """What a process needs in its environment to use this cluster."""
        return {
            "REDIS_URL": f"redis://127.0.0.1:1/{db}",
            "REDIS_SENTINELS": self.sentinels_setting,
            "REDIS_MASTER_NAME": MASTER_NAME,
        }

    def primary_port(self) -> int:
        """The primary's port as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as node:
                    found = node.sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                continue
            if found:
                return int(found[1])
        raise LookupError("no sentinel answers")

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def failover(self, timeout: float = 30) -> int:
        """``SENTINEL FAILOVER``: the replica becomes the primary, the old primary its replica.
        Returns the new primary's port once every sentinel names it."""
        before = self.primary_port()
        with redis.Redis(port=self.sentinel_ports[0], socket_timeout=5) as node:
            node.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        return self.wait_for_new_primary(before, timeout)

    def kill_primary(self, timeout: float = 30) -> int:
        """SIGKILL the primary; the sentinels agree it is down and promote the replica."""
        before = self.primary_port()
        self.server_on(before).kill()
        return self.wait_for_new_primary(before, timeout)

    def wait_for_new_primary(self, before: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports = set()
            for port in self.sentinel_ports:
                try:
                    with redis.Redis(port=port, socket_timeout=1) as node:
                        found = node.sentinel_get_master_addr_by_name(MASTER_NAME)
                    ports.add(int(found[1]) if found else None)
                except redis.RedisError:
                    ports.add(None)
            if len(ports) == 1 and (now := ports.pop()) not in (None, before):
                assert now is not None
                # Done when the new one is the primary and the old one no longer is (a write to
                # the old one until it is demoted would be lost at its resync).
                if _role(now) == "master" and _role(before) != "master":
                    return now
            time.sleep(0.1)
        raise TimeoutError(f"no new primary within {timeout} s\n{self.logs()}")

    def logs(self) -> str:
        found = []
        for server in self.servers:
            for log in sorted(server.data_dir.glob("*.log")):
                found.append(f"--- {log}\n{log.read_text(errors='replace')[-1500:]}")
        return "\n".join(found)

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        for server in self.servers:
            server.stop()


@contextmanager
def sentinel_cluster(
    root: Path, timeout: float = 30, *, persistent: bool = False
) -> Iterator[SentinelCluster]:
    """Start the cluster, wait until every sentinel sees the primary, its replica and the two
    other sentinels (a failover needs their votes), yield it, stop it. ``persistent``: each
    server keeps an append-only file, so that one killed comes back with its data."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed (scripts/setup.sh)"
    primary = start_redis(root / "primary", persistent=persistent)
    replica = start_redis(root / "replica", persistent=persistent)
    cluster = SentinelCluster([primary, replica], [free_port() for _ in range(3)])
    try:
        with redis.Redis(port=replica.port) as client:
            client.replicaof("127.0.0.1", primary.port)
        for index, port in enumerate(cluster.sentinel_ports):
            where = root / f"sentinel{index}"
            where.mkdir()
            conf = where / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {where}\nlogfile {where / 'sentinel.log'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            cluster.sentinels.append(spawn_tied([binary, str(conf), "--sentinel"], os.environ))
            # The logs of the sentinels, with the servers' (cluster.logs()).
            cluster.servers[0].data_dir.joinpath(f"sentinel{index}.log").symlink_to(
                where / "sentinel.log"
            )
        _wait_until_sentinels_agree(cluster, primary.port, timeout)
        yield cluster
    finally:
        cluster.stop()


def _wait_until_sentinels_agree(cluster: SentinelCluster, primary: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ready = 0
        for port in cluster.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as node:
                    state = node.sentinel_master(MASTER_NAME)
            except redis.RedisError:
                continue
            if (
                int(state["port"]) == primary
                and int(state["num-slaves"]) >= 1
                and int(state["num-other-sentinels"]) >= 2
            ):
                ready += 1
        if ready == len(cluster.sentinel_ports):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the sentinels did not agree within {timeout} s\n{cluster.logs()}")
        time.sleep(0.1)


def _role(port: int) -> str:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return str(client.info("replication")["role"])
    except redis.RedisError:
        return "unreachable"
