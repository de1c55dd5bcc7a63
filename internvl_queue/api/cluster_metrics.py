"""What the whole service is doing, read from Redis when Prometheus scrapes ``/metrics``.

Every API replica (and every gunicorn process in it) reports the same figures, since they all
read the same Redis: in PromQL take ``max`` over instances of these (not ``sum``). Read in one
pipelined round trip, plus one for the workers' heartbeats:

- job counters and histograms, counted where each job's state is stored
  (``core/job_metrics.py``);
- the queue: jobs queued (the store's index) and the oldest one's age; messages waiting in the
  broker list of each queue a worker or this API uses (``broker_layout``);
- workers by state, queue and model, and per worker (its heartbeat): GPU memory, the engine's
  batches, tiles and tokens, jobs it stored;
- the webhook outbox: events waiting for an attempt, and how many of them are due now.

When Redis does not answer, only ``internvl_queue_redis_up 0`` is reported.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..broker_layout import queue_length
from ..core.job_metrics import BY_STATUS, HISTOGRAMS, JobMetrics, read_job_metrics
from ..core.keys import outbox_key, queued_key
from ..core.priority import lane_queues
from ..core.workers import WorkerInfo, WorkerRegistry, WorkerState

__all__ = ["ClusterCollector"]

log = logging.getLogger(__name__)

NS = "internvl_queue"

# Histogram help texts (their names are internvl_queue_job_<name>).
_HISTOGRAM_HELP = {
    "queued_seconds": "Seconds from submission to start, of jobs that started (observed when "
    "they finish)",
    "preprocess_seconds": "Seconds decoding and tiling a succeeded job's images",
    "inference_seconds": "Seconds of GPU work of the batch a succeeded job ran in",
    "total_seconds": "Seconds from submission to the stored outcome, by status",
    "batch_size": "Jobs in the GPU batch each succeeded job ran in",
    "image_tiles": "Image tiles of each succeeded job",
    "generated_tokens": "Tokens generated for each succeeded job",
}
# Per-worker engine counters from the heartbeat: (engine key, metric name, help).
_ENGINE_COUNTERS = (
    ("batches", "worker_batches", "GPU batches this worker ran"),
    ("batched_jobs", "worker_batched_jobs", "Jobs in the GPU batches this worker ran"),
    ("batched_tiles", "worker_batched_tiles", "Image tiles in the GPU batches this worker ran"),
    ("generated_tokens", "worker_generated_tokens", "Tokens this worker's batches generated"),
    ("oom_splits", "worker_oom_splits", "Batches split after a CUDA out-of-memory error"),
    (
        "graph_captures_serving",
        "worker_graph_captures_serving",
        "Decode graphs captured while serving (each one stalled a batch)",
    ),
)
_GPU_MEMORY = (
    ("allocated", "Bytes held by the worker's live tensors"),
    ("reserved", "Bytes held by the worker's CUDA caching allocator"),
    ("used", "Bytes in use on the worker's GPU, every process on it included"),
    ("total", "Bytes of memory of the worker's GPU"),
)


class ClusterCollector(Collector):
    """A prometheus-client collector that reads the service's state from Redis (module doc)."""

    def __init__(
        self, client: redis.Redis, queue: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.redis = client
        self.queue = queue  # this API's queue: reported even when no worker consumes it
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        try:
            workers = WorkerRegistry(self.redis).live(forget=False)
            queues = sorted({self.queue, *(w.queue for w in workers if w.queue)})
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(queued_key())
            pipe.zrange(queued_key(), 0, 0, withscores=True)
            pipe.zcard(outbox_key())
            pipe.zcount(outbox_key(), "-inf", self.clock())
            queued, oldest, outbox, due = pipe.execute()
            # One series per lane (core/priority.py); the normal lane is the queue's own name.
            lanes = [lane for queue in queues for lane in lane_queues(queue)]
            depths = {lane: queue_length(self.redis, lane) for lane in lanes}
            jobs = read_job_metrics(self.redis)
        except redis.RedisError as exc:
            log.warning("/metrics: Redis does not answer (%s); cluster figures left out", exc)
            yield _gauge("redis_up", "Whether Redis answered this scrape", 0)
            return
        yield _gauge("redis_up", "Whether Redis answered this scrape", 1)
        yield from _job_families(jobs)
        yield _gauge("jobs_queued", "Jobs accepted and not yet started", int(queued))
        age = max(self.clock() - float(oldest[0][1]), 0.0) if oldest else 0.0
        yield _gauge(
            "oldest_queued_job_age_seconds", "Age of the oldest queued job (0: none queued)", age
        )
        depth = GaugeMetricFamily(
            f"{NS}_broker_queue_messages",
            "Messages waiting in the broker's queue, per lane (<queue>.high, <queue>, "
            "<queue>.low; not yet taken by a worker)",
            labels=["queue"],
        )
        for queue, length in depths.items():
            depth.add_metric([queue], length)
        yield depth
        yield _gauge("webhook_outbox_events", "Webhook events waiting for an attempt", int(outbox))
        yield _gauge(
            "webhook_outbox_due_events", "Webhook events whose attempt is due now", int(due)
        )
        yield from _worker_families(workers)


def _gauge(name: str, help: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NS}_{name}", help, value=value)


def _job_families(jobs: JobMetrics) -> Iterator[Metric]:
    yield CounterMetricFamily(
        f"{NS}_jobs_submitted", "Jobs accepted and stored", value=jobs.submitted
    )
    finished = CounterMetricFamily(
        f"{NS}_jobs_finished",
        "Jobs that reached a terminal state, by status and error code ('' when succeeded)",
        labels=["status", "code"],
    )
    for (status, code), count in sorted(jobs.finished.items()):
        finished.add_metric([status, code], count)
    yield finished
    yield CounterMetricFamily(
        f"{NS}_generated_tokens", "Tokens generated for succeeded jobs", value=jobs.generated_tokens
    )
    yield CounterMetricFamily(
        f"{NS}_result_cache_hits",
        "Jobs answered from the result cache at submit, without a GPU",
        value=jobs.result_cache_hits,
    )
    for name in HISTOGRAMS:
        labels = ["status"] if name in BY_STATUS else []
        family = HistogramMetricFamily(f"{NS}_job_{name}", _HISTOGRAM_HELP[name], labels=labels)
        for (found, label), series in sorted(jobs.histograms.items()):
            if found == name:
                buckets = [(_bound(le), count) for le, count in series.buckets]
                family.add_metric([label] if labels else [], buckets, series.sum)
        yield family
    attempts = CounterMetricFamily(
        f"{NS}_webhook_attempts",
        "Webhook attempts recorded, by outcome (delivered, retrying, gave_up, gone, refused)",
        labels=["outcome"],
    )
    for outcome, count in sorted(jobs.webhook_attempts.items()):
        attempts.add_metric([outcome], count)
    yield attempts


def _bound(le: float) -> str:
    return "+Inf" if le == float("inf") else repr(float(le))


def _worker_families(workers: list[WorkerInfo]) -> Iterator[Metric]:
    by_state = GaugeMetricFamily(
        f"{NS}_workers",
        "Workers heartbeating, by state, queue and model",
        labels=["state", "queue", "model"],
    )
    counts = Counter((w.state.value, w.queue or "", w.model) for w in workers)
    for state in WorkerState:  # every state shown, 0 included: alerts need the series
        for queue, model in sorted({(q, m) for _, q, m in counts}):
            by_state.add_metric([state.value, queue, model], counts[(state.value, queue, model)])
    yield by_state
    info = GaugeMetricFamily(
        f"{NS}_worker_info",
        "One series per worker, with its state, device, GPU and host GPUs (always 1)",
        labels=["worker", "state", "queue", "model", "device", "gpu", "gpus"],
    )
    for w in workers:
        gpus = ",".join(str(g) for g in w.gpus or [])  # "2,3" for a worker spanning two GPUs
        info.add_metric(
            [w.name, w.state.value, w.queue or "", w.model, w.device, w.gpu_name or "", gpus], 1
        )
    yield info
    stored = CounterMetricFamily(
        f"{NS}_worker_jobs",
        "Jobs whose outcome this worker stored, by status (since the worker started)",
        labels=["worker", "status"],
    )
    for w in workers:
        stored.add_metric([w.name, "succeeded"], w.jobs_succeeded)
        stored.add_metric([w.name, "failed"], w.jobs_failed)
    yield stored
    yield from _engine_families(workers)
    for field, help in _GPU_MEMORY:
        family = GaugeMetricFamily(f"{NS}_worker_gpu_memory_{field}_bytes", help, labels=["worker"])
        for w in workers:
            if w.gpu_memory and field in w.gpu_memory:
                family.add_metric([w.name], w.gpu_memory[field])
        yield family


def _engine_families(workers: list[WorkerInfo]) -> Iterator[Metric]:
    for key, name, help in _ENGINE_COUNTERS:
        family = CounterMetricFamily(f"{NS}_{name}", help, labels=["worker"])
        for w in workers:
            value = _number((w.engine or {}).get(key))
            if value is not None:
                family.add_metric([w.name], value)
        yield family
    largest = GaugeMetricFamily(
        f"{NS}_worker_largest_batch_tiles",
        "The most image tiles one of this worker's batches carried (its peak memory)",
        labels=["worker"],
    )
    for w in workers:
        value = _number((w.engine or {}).get("largest_batch_tiles"))
        if value is not None:
            largest.add_metric([w.name], value)
    yield largest


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None
