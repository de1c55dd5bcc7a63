"""Redis with Sentinel (issue 23): our own client and the whole service follow a failover to the
new primary without being recreated or restarted. Real redis-server processes throughout: a
primary, a replica and three sentinels (tests/sentinel_cluster.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import requests

from internvl_queue.cli.doctor.redis_check import check_redis_target
from internvl_queue.cli.doctor.report import Level
from internvl_queue.core.redis_client import connect
from internvl_queue.core.workers import WorkerRegistry
from tests.api.api_process import ApiProcess
from tests.conftest import WorkerProcess
from tests.receiver import Receiver
from tests.reliability.harness import (
    TERMINAL,
    Burst,
    WebhookWorker,
    fault_settings,
    stack_env,
    wait_for,
)
from tests.reliability.test_redis_restart import _terminal_events
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


def test_the_service_on_sentinels_runs_jobs_before_and_after_failovers(
    cluster: SentinelCluster, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A real API, GPU worker and webhook worker configured with REDIS_SENTINELS: a job runs and
    its webhook arrives before a failover, after ``SENTINEL FAILOVER`` and after the new primary
    is SIGKILLed too (the old one, a replica by then, is promoted back); no process exits."""
    hooks = Receiver().start()
    settings = replace(
        fault_settings(cluster.env()["REDIS_URL"], str(tiny_model_dir)),
        redis_sentinels=cluster.sentinels_setting,
        redis_master_name=MASTER_NAME,
    )
    env = {**stack_env(settings), **cluster.env()}
    api = ApiProcess(settings.redis_url, tmp_path / "api.log", **env)
    worker = WorkerProcess(settings, tmp_path / "worker.log", **env)
    webhooks = WebhookWorker(env, tmp_path / "webhooks.log")
    client = connect(cluster.target(), max_connections=4)
    worker.registry = WorkerRegistry(client)  # its own would use REDIS_URL's (unused) host
    processes = {"API": api, "worker": worker, "webhook worker": webhooks}
    try:
        api.wait_ready()
        worker.wait_ready()
        webhooks.wait_ready()
        burst = Burst(api.url, webhook_url=hooks.url)
        done: list[str] = []
        for moment in ("before any failover", "after SENTINEL FAILOVER", "after a SIGKILL"):
            if moment == "after SENTINEL FAILOVER":
                cluster.failover()
            elif moment == "after a SIGKILL":
                # The old primary, a replica now (once the sentinels have reconfigured it and it
                # has synced), must have caught up before it is promoted.
                wait_for(lambda: client.wait(1, 500) == 1, 30, "the old primary to replicate")
                cluster.kill_primary()
            job_id = _submit_until_accepted(burst)
            done.append(job_id)

            def finished(job_id: str = job_id) -> bool:
                reply = requests.get(f"{api.url}/v1/jobs/{job_id}", timeout=30)
                return reply.status_code == 200 and reply.json()["status"] in TERMINAL

            try:
                wait_for(finished, 60, f"the job submitted {moment}")
                wait_for(lambda: set(done) <= set(_terminal_events(hooks)), 60, "its webhook")
            except AssertionError as exc:
                logs = f"{worker.log()[-3000:]}\n{webhooks.log()[-2000:]}"
                raise AssertionError(f"{exc}\n{logs}") from None
            reply = requests.get(f"{api.url}/v1/jobs/{job_id}", timeout=30).json()
            assert reply["status"] == "succeeded", reply
            for name, process in processes.items():
                assert process.process.poll() is None, f"the {name} exited\n{process.log()}"
    finally:
        for process in processes.values():
            if process.process.poll() is None:
                process.kill()
            process.close()
        client.connection_pool.disconnect()
        hooks.stop()


def _submit_until_accepted(burst: Burst, timeout: float = 30) -> str:
    """A job accepted (202); while the failover is under way the API answers 503 with
    Retry-After, never anything else."""
    deadline = time.monotonic() + timeout
    while True:
        reply = burst.submit()
        if reply.status_code == 202:
            return str(reply.json()["id"])
        assert reply.status_code == 503, reply.text
        assert reply.headers.get("Retry-After"), reply.headers
        assert time.monotonic() < deadline, "the API never accepted a job after the failover"
        time.sleep(0.2)
