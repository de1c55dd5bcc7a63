"""The collector behind ``/metrics``' cluster-wide figures, on a real Redis: the queue, a GPU
worker's heartbeat as gauges, and a Redis that does not answer."""

from __future__ import annotations

import time

import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from internvl_queue.api.cluster_metrics import ClusterCollector
from internvl_queue.cli.redis_server import free_port
from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.store import JobStore
from internvl_queue.core.workers import WorkerInfo, WorkerRegistry, WorkerState

PARAMS = JobParams(max_new_tokens=8, max_tiles=2)
GIB = 2**30


def _scrape(collector: ClusterCollector) -> dict[str, float]:
    text = generate_latest(collector).decode()
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_queue_and_its_oldest_job(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=3600)
    first = store.create(Job.new("q", PARAMS, image_count=1), [b"i"])
    store.create(Job.new("q", PARAMS, image_count=1), [b"i"])
    found = _scrape(ClusterCollector(redis_client, "q", clock=lambda: first.created_at + 42))
    assert found["internvl_queue_redis_up[]"] == 1
    assert found["internvl_queue_jobs_queued[]"] == 2
    assert found["internvl_queue_oldest_queued_job_age_seconds[]"] == pytest.approx(42)
    assert found["internvl_queue_jobs_submitted_total[]"] == 2
    assert found["internvl_queue_broker_queue_messages[('queue', 'q')]"] == 0  # none dispatched
    for lane in ("q.high", "q.low"):  # the priority lanes, each its own series
        assert found[f"internvl_queue_broker_queue_messages[('queue', '{lane}')]"] == 0


def test_a_gpu_workers_heartbeat_becomes_its_series(redis_client: redis.Redis) -> None:
    info = WorkerInfo(
        name="gpu-host:41",
        pid=41,
        model="OpenGVLab/InternVL3-1B-hf",
        device="cuda",
        gpu_name="NVIDIA H200",
        loaded_at=time.time(),
        last_seen=time.time(),
        jobs_succeeded=7,
        engine={"batches": 3, "batched_jobs": 12, "batched_tiles": 30, "largest_batch_tiles": 13},
        state=WorkerState.READY,
        queue="internvl",
        gpu_memory={"allocated": 3 * GIB, "reserved": 5 * GIB, "used": 6 * GIB, "total": 140 * GIB},
        gpu_index=2,
        gpus=[2, 3],  # a worker spanning two GPUs
        gpu_names=["NVIDIA H200", "NVIDIA H200"],
    )
    WorkerRegistry(redis_client).publish(info, ttl_s=30)
    found = _scrape(ClusterCollector(redis_client, "internvl"))
    me = "[('worker', 'gpu-host:41')]"
    assert found[f"internvl_queue_worker_gpu_memory_allocated_bytes{me}"] == 3 * GIB
    assert found[f"internvl_queue_worker_gpu_memory_reserved_bytes{me}"] == 5 * GIB
    assert found[f"internvl_queue_worker_gpu_memory_used_bytes{me}"] == 6 * GIB
    assert found[f"internvl_queue_worker_gpu_memory_total_bytes{me}"] == 140 * GIB
    assert found[f"internvl_queue_worker_batched_tiles_total{me}"] == 30
    assert found[f"internvl_queue_worker_largest_batch_tiles{me}"] == 13
    ready = "[('model', 'OpenGVLab/InternVL3-1B-hf'), ('queue', 'internvl'), ('state', 'ready')]"
    assert found[f"internvl_queue_workers{ready}"] == 1
    assert found[f"internvl_queue_workers{ready.replace('ready', 'loading')}"] == 0
    described = (
        "[('device', 'cuda'), ('gpu', 'NVIDIA H200'), ('gpus', '2,3'), "
        "('model', 'OpenGVLab/InternVL3-1B-hf'), ('queue', 'internvl'), ('state', 'ready'), "
        "('worker', 'gpu-host:41')]"
    )
    assert found[f"internvl_queue_worker_info{described}"] == 1
    succeeded = "[('status', 'succeeded'), ('worker', 'gpu-host:41')]"
    assert found[f"internvl_queue_worker_jobs_total{succeeded}"] == 7


def test_a_redis_that_does_not_answer_is_said_so() -> None:
    gone = redis.Redis(port=free_port(), socket_connect_timeout=1)
    assert _scrape(ClusterCollector(gone, "q")) == {"internvl_queue_redis_up[]": 0}
    gone.close()
