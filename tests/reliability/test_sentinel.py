"""Redis with Sentinel (issue 23): our own client and the whole service follow a failover to the
new primary without being recreated or restarted. Real redis-server processes throughout: a
primary, a replica and three sentinels (tests/sentinel_cluster.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from internvl_queue.cli.doctor.redis_check import check_redis_target
from internvl_queue.cli.doctor.report import Level
from internvl_queue.core.redis_client import connect
from tests.sentinel_cluster import MASTER_NAME, SentinelCluster, sentinel_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    with sentinel_cluster(tmp_path) as found:
        yield found


def _write_until_it_works(client: redis.Redis, key: str, value: str, timeout: float = 30) -> int:
    """SET through ``client`` until it succeeds (a failover refuses writes for a moment); the
    number of failed tries."""
    deadline = time.monotonic() + timeout
    failures = 0
    while True:
        try:
            client.set(key, value)
            return failures
        except redis.ConnectionError:
            failures += 1
            assert time.monotonic() < deadline, "the client never reached the new primary"
            time.sleep(0.1)


def _port_of(port: int, key: str) -> bytes | None:
    with redis.Redis(port=port, socket_timeout=2) as direct:
        value: bytes | None = direct.get(key)
        return value


@pytest.mark.parametrize("how", ["sentinel failover", "primary SIGKILLed"])
def test_the_same_client_writes_to_the_new_primary_after_a_failover(
    cluster: SentinelCluster, how: str
) -> None:
    client = connect(cluster.target(db=3), max_connections=4)
    try:
        first = cluster.primary_port()
        client.set("before", "1")
        # Replication is asynchronous: without this, "before" may die with the old primary.
        assert client.wait(1, 5000) == 1
        assert _port_of(first, "before") is None  # db 3 of REDIS_URL, not db 0
        with redis.Redis(port=first, db=3) as direct:
            assert direct.get("before") == b"1"
        new = cluster.failover() if how == "sentinel failover" else cluster.kill_primary()
        assert new != first
        _write_until_it_works(client, "after", "2")
        with redis.Redis(port=new, db=3) as direct:
            assert direct.get("after") == b"2"
            assert direct.get("before") == b"1"  # it was replicated before the failover
        # A client holding a pool of connections keeps using the new primary.
        assert [client.incr("n") for _ in range(5)] == [1, 2, 3, 4, 5]
    finally:
        client.connection_pool.disconnect()


def test_doctor_lists_the_primary_the_replicas_and_the_sentinels(cluster: SentinelCluster) -> None:
    primary = cluster.primary_port()
    replica = next(s.port for s in cluster.servers if s.port != primary)
    checks = check_redis_target(cluster.target(), "REDIS_SENTINELS")
    sentinel_check = checks[0]
    assert sentinel_check.subject == "Redis Sentinel"
    assert sentinel_check.level is Level.OK, sentinel_check.detail
    assert f"primary {MASTER_NAME!r} at 127.0.0.1:{primary}" in sentinel_check.detail
    assert f"127.0.0.1:{replica} (online)" in sentinel_check.detail
    for port in cluster.sentinel_ports:
        assert f"127.0.0.1:{port}" in sentinel_check.detail
    assert checks[1].level is Level.OK and f"127.0.0.1:{primary}" in checks[1].detail
    # A dead sentinel is named, and the others still answer.
    cluster.sentinels[2].kill()
    cluster.sentinels[2].wait()
    again = check_redis_target(cluster.target(), "REDIS_SENTINELS", timeout_s=1)
    assert again[0].level is Level.WARN
    assert f"not answering: 127.0.0.1:{cluster.sentinel_ports[2]}" in again[0].detail
