"""``internvl-queue healthcheck``: the containers' health checks, against a real Redis."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from internvl_queue.cli.healthcheck import run_healthcheck
from internvl_queue.cli.redis_server import free_port, start_redis
from internvl_queue.core.keys import workers_key
from internvl_queue.core.workers import WorkerInfo, WorkerRegistry, WorkerState


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis of this module's own: the suite's shared worker heartbeats from this very host."""
    server = start_redis(tmp_path / "redis", persistent=False)
    yield server.url
    server.stop()


def heartbeat(
    client: redis.Redis,
    name: str,
    *,
    ttl_s: float = 30,
    state: WorkerState = WorkerState.READY,
    error: str | None = None,
    consuming: bool | None = None,
) -> None:
    now = time.time()
    info = WorkerInfo(
        name,
        4242,
        "tiny-model",
        "cpu",
        None,
        now,
        now,
        state=state,
        since=now,
        error=error,
        consuming=consuming,
    )
    WorkerRegistry(client).publish(info, ttl_s=ttl_s)


def check(kind: str, url: str, host: str = "box-a") -> tuple[int, str]:
    out = io.StringIO()
    code = run_healthcheck(kind, url, host=host, out=out)
    return code, out.getvalue()


def test_worker_is_unhealthy_until_a_worker_of_this_host_heartbeats(
    redis_url: str, redis_client: redis.Redis
) -> None:
    code, said = check("worker", redis_url)
    assert code == 1 and "no live worker heartbeat from host box-a" in said

    heartbeat(redis_client, "box-b:17")  # another host's worker (another container) is not ours
    assert check("worker", redis_url)[0] == 1

    heartbeat(redis_client, "box-a:17")
    code, said = check("worker", redis_url)
    assert code == 0 and said == "worker ready: box-a:17 (tiny-model on cpu)\n"


def test_worker_is_unhealthy_while_loading_and_after_a_failed_load(
    redis_url: str, redis_client: redis.Redis
) -> None:
    heartbeat(redis_client, "box-a:17", state=WorkerState.LOADING)
    code, said = check("worker", redis_url)
    assert (
        code == 1 and said == "no worker of host box-a is ready: box-a:17 is loading tiny-model\n"
    )

    heartbeat(redis_client, "box-a:17", state=WorkerState.FAILED, error="no such model")
    code, said = check("worker", redis_url)
    assert code == 1 and "box-a:17 could not load tiny-model: no such model" in said

    heartbeat(redis_client, "box-a:18")  # another process of the container is ready (--gpus)
    assert check("worker", redis_url)[0] == 0


def test_a_ready_worker_whose_broker_consumer_is_not_connected_is_unhealthy(
    redis_url: str, redis_client: redis.Redis
) -> None:
    heartbeat(redis_client, "box-a:17", consuming=False)  # reconnecting after a Redis restart
    code, said = check("worker", redis_url)
    assert code == 1 and said == (
        "no worker of host box-a is ready: box-a:17 has tiny-model loaded but its broker "
        "consumer is not connected (reconnecting to Redis): it takes no job\n"
    )
    heartbeat(redis_client, "box-a:17", consuming=True)
    assert check("worker", redis_url)[0] == 0


def test_worker_is_unhealthy_once_its_heartbeat_expires(
    redis_url: str, redis_client: redis.Redis
) -> None:
    heartbeat(redis_client, "box-a:17", ttl_s=0.3)
    assert check("worker", redis_url)[0] == 0
    time.sleep(0.5)
    assert check("worker", redis_url)[0] == 1
    # Read-only: the expired name is left for the registry to forget, not removed by the check.
    assert redis_client.scard(workers_key()) == 1


def test_host_name_prefix_is_matched_whole(redis_url: str, redis_client: redis.Redis) -> None:
    heartbeat(redis_client, "box-ab:17")
    assert check("worker", redis_url, host="box-a")[0] == 1


def test_webhook_worker_is_healthy_while_redis_answers(redis_url: str) -> None:
    assert check("webhook-worker", redis_url) == (0, "webhook worker: Redis answers\n")


def test_unreachable_redis_is_one_sentence_and_exit_1() -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    for kind in ("worker", "webhook-worker"):
        code, said = check(kind, url)
        assert code == 1
        assert said.startswith(f"Redis at 127.0.0.1:{url.rsplit(':', 1)[1]} does not answer")
        assert said.rstrip().endswith("check REDIS_URL") and said.count("\n") == 1
        assert "secret" not in said


def test_command_uses_this_hosts_name_and_redis_url(
    redis_url: str, redis_client: redis.Redis
) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "internvl_queue", "healthcheck", "worker"],
            env={**os.environ, "REDIS_URL": redis_url},
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert run().returncode == 1
    heartbeat(redis_client, f"{socket.gethostname()}:99")
    done = run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"worker ready: {socket.gethostname()}:99") and not done.stderr
