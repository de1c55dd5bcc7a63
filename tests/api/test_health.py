import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask

from internvl_queue.api.openapi import openapi_document
from internvl_queue.core.settings import Settings
from internvl_queue.core.workers import WorkerInfo, WorkerRegistry, WorkerState
from tests.api.test_openapi_spec import _validator


def test_healthz(client) -> None:
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_needs_a_worker(client, redis_client: redis.Redis) -> None:
    reply = client.get("/readyz")
    assert reply.status_code == 503
    assert reply.json == {
        "status": "not_ready",
        "message": "no worker is running: start one (internvl-queue worker)",
        "redis": True,
        "workers": [],
        "auth": "open",
        "queue": "internvl",
    }


def _ready_worker(name: str, **fields: Any) -> WorkerInfo:
    """A loaded worker of the API's queue on an H100, as its heartbeat publishes it."""
    return WorkerInfo(
        name=name,
        pid=1,
        model="m",
        device="cuda:0",
        gpu_name="NVIDIA H100",
        loaded_at=1.0,
        last_seen=2.0,
        queue="internvl",
        **fields,
    )


def test_readyz_lists_live_workers(client, redis_client: redis.Redis) -> None:
    registry = WorkerRegistry(redis_client)
    registry.publish(_ready_worker("w1", jobs_succeeded=3), ttl_s=30)
    reply = client.get("/readyz")
    assert reply.status_code == 200
    assert reply.json["message"] == "1 worker(s) ready on queue 'internvl'"
    [worker] = reply.json["workers"]
    assert worker["state"] == "ready"
    assert (worker["model"], worker["device"], worker["gpu_name"], worker["jobs_done"]) == (
        "m",
        "cuda:0",
        "NVIDIA H100",
        3,
    )
    assert worker["queue"] == "internvl"


def test_readyz_says_when_ready_workers_are_reconnecting_to_the_broker(
    client, redis_client: redis.Redis
) -> None:
    registry = WorkerRegistry(redis_client)
    for name, consuming in (("w1", True), ("w2", False)):
        registry.publish(_ready_worker(name, consuming=consuming), ttl_s=30)
    reply = client.get("/readyz")
    assert reply.status_code == 200  # jobs are accepted meanwhile
    assert reply.json["message"] == (
        "2 worker(s) ready on queue 'internvl'; 1 of them not taking jobs now: reconnecting to "
        "the broker (Redis)"
    )
    assert sorted(w["consuming"] for w in reply.json["workers"]) == [False, True]


def test_readyz_shows_each_workers_gpus(client, redis_client: redis.Redis) -> None:
    registry = WorkerRegistry(redis_client)
    common = {"model": "m", "loaded_at": 1.0, "last_seen": 2.0, "queue": "internvl"}
    # One worker spanning host GPUs 2 and 3 (worker --gpus 0,1,2,3 --gpus-per-worker 2), one
    # pinned to GPU 0, one started alone.
    registry.publish(
        WorkerInfo(
            name="span",
            pid=1,
            device="cuda:0",
            gpu_name="NVIDIA H200",
            gpu_index=2,
            gpus=[2, 3],
            gpu_names=["NVIDIA H200", "NVIDIA H200"],
            gpu_memory={"allocated": 2, "reserved": 4, "used": 6, "total": 8},
            **common,
        ),
        ttl_s=30,
    )
    registry.publish(
        WorkerInfo(
            name="one",
            pid=2,
            device="cuda",
            gpu_name="NVIDIA H200",
            gpu_index=0,
            gpus=[0],
            gpu_names=["NVIDIA H200"],
            **common,
        ),
        ttl_s=30,
    )
    registry.publish(
        WorkerInfo(name="alone", pid=3, device="cpu", gpu_name=None, **common),
        ttl_s=30,
    )
    reply = client.get("/readyz")
    assert reply.status_code == 200
    listed = {w["name"]: (w["gpus"], w["gpu_names"]) for w in reply.json["workers"]}
    assert listed == {
        "span": ([2, 3], ["NVIDIA H200", "NVIDIA H200"]),
        "one": ([0], ["NVIDIA H200"]),
        "alone": (None, None),
    }
    document = openapi_document(Settings())
    _validator(document)(document["components"]["schemas"]["Readiness"]).validate(reply.json)


def test_readyz_without_redis(make_app: Callable[..., Flask]) -> None:
    from internvl_queue.cli.redis_server import free_port

    app = make_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    reply = app.test_client().get("/readyz")
    assert reply.status_code == 503
    assert reply.json["redis"] is False
    assert reply.json["auth"] == "unknown"


def _publish(client: redis.Redis, name: str, state: WorkerState, **fields: object) -> None:
    fields.setdefault("queue", "internvl")  # the API's queue (Settings' default)
    info = WorkerInfo(
        name=name,
        pid=1,
        model="org/model",
        device="unknown",
        gpu_name=None,
        loaded_at=0.0,
        last_seen=time.time(),
        state=state,
        **fields,
    )
    WorkerRegistry(client).publish(info, ttl_s=30)


def test_readyz_says_a_worker_is_loading(client, redis_client: redis.Redis) -> None:
    _publish(redis_client, "w1", WorkerState.LOADING, since=time.time() - 42)
    reply = client.get("/readyz")
    assert reply.status_code == 503
    assert reply.json["message"] == "no worker is ready yet: w1 is loading org/model (for 42 s)"
    assert reply.json["workers"][0]["state"] == "loading"


def test_readyz_says_why_a_worker_failed(client, redis_client: redis.Redis) -> None:
    reason = "INTERNVL_MODEL=org/model cannot be downloaded"
    _publish(redis_client, "w1", WorkerState.FAILED, error=reason)
    reply = client.get("/readyz")
    assert reply.status_code == 503
    assert reply.json["message"] == f"no worker is ready: w1 could not load its model: {reason}"
    assert reply.json["workers"][0]["error"] == reason


def test_one_ready_worker_is_enough(client, redis_client: redis.Redis) -> None:
    _publish(redis_client, "w1", WorkerState.FAILED, error="no")
    _publish(redis_client, "w2", WorkerState.READY)
    assert client.get("/readyz").status_code == 200


def test_readyz_says_a_worker_stopped_serving(client, redis_client: redis.Redis) -> None:
    _publish(redis_client, "w1", WorkerState.DEFUNCT, error="CUDA error: illegal memory access")
    reply = client.get("/readyz")
    assert reply.status_code == 503
    assert reply.json["message"] == (
        "no worker is ready: w1 stopped serving (CUDA error: illegal memory access); "
        "its supervisor restarts it"
    )


def test_a_ready_worker_of_another_queue_does_not_make_the_api_ready(
    client, redis_client: redis.Redis
) -> None:
    _publish(redis_client, "w1", WorkerState.READY, queue="batch")
    _publish(redis_client, "w2", WorkerState.READY, queue=None)  # a worker from before the field
    reply = client.get("/readyz")
    assert reply.status_code == 503
    assert reply.json["queue"] == "internvl"
    assert reply.json["message"] == (
        "no worker consumes this API's queue 'internvl' (INTERNVL_QUEUE): the 2 running consume "
        "batch, unknown (an older worker); start a worker with INTERNVL_QUEUE=internvl, or set "
        "the API's INTERNVL_QUEUE to theirs"
    )
    assert sorted(w["queue"] or "" for w in reply.json["workers"]) == ["", "batch"]

    _publish(redis_client, "w3", WorkerState.READY)  # one of its own queue
    reply = client.get("/readyz")
    assert reply.status_code == 200
    assert reply.json["message"] == "1 worker(s) ready on queue 'internvl'"


def test_only_its_own_queues_workers_explain_why_it_is_not_ready(
    client, redis_client: redis.Redis
) -> None:
    _publish(redis_client, "w1", WorkerState.READY, queue="batch")
    _publish(redis_client, "w2", WorkerState.LOADING, since=time.time() - 5)
    reply = client.get("/readyz")
    assert reply.status_code == 503
    assert reply.json["message"] == "no worker is ready yet: w2 is loading org/model (for 5 s)"
