from collections.abc import Callable

import redis
from flask import Flask

from internvl_queue.core.settings import Settings
from internvl_queue.core.workers import WorkerInfo, WorkerRegistry


def test_healthz(client) -> None:
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_needs_a_worker(client, redis_client: redis.Redis) -> None:
    reply = client.get("/readyz")
    assert reply.status_code == 503
    assert reply.json == {"status": "not_ready", "redis": True, "workers": [], "auth": "open"}


def test_readyz_lists_live_workers(client, redis_client: redis.Redis) -> None:
    registry = WorkerRegistry(redis_client)
    registry.publish(
        WorkerInfo(
            name="w1",
            pid=1,
            model="m",
            device="cuda:0",
            gpu_name="NVIDIA H100",
            loaded_at=1.0,
            last_seen=2.0,
            jobs_succeeded=3,
        ),
        ttl_s=30,
    )
    reply = client.get("/readyz")
    assert reply.status_code == 200
    [worker] = reply.json["workers"]
    assert (worker["model"], worker["device"], worker["gpu_name"], worker["jobs_done"]) == (
        "m",
        "cuda:0",
        "NVIDIA H100",
        3,
    )


def test_readyz_without_redis(make_app: Callable[..., Flask]) -> None:
    from internvl_queue.cli.redis_server import free_port

    app = make_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    reply = app.test_client().get("/readyz")
    assert reply.status_code == 503
    assert reply.json["redis"] is False
    assert reply.json["auth"] == "unknown"
