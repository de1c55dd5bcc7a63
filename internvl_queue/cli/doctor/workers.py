"""The workers heartbeating in Redis now, each with its state and its GPUs (``worker --gpus``;
with ``--gpus-per-worker``, its group): what this machine would join.

Read only (a health check's look: expired entries are not forgotten here), and silent when
Redis cannot be reached: the Redis check has said so already.
"""

from __future__ import annotations

import redis

from ...core.redis_client import RedisTarget, connect
from ...core.workers import WorkerInfo, WorkerRegistry, WorkerState
from .report import Check, Level

__all__ = ["check_workers", "describe_worker"]


def describe_worker(worker: WorkerInfo) -> str:
    """One worker in a few words: state, where its model is, its queue."""
    if worker.gpus:
        names = ", ".join(worker.gpu_names or [])
        plural = "s" if len(worker.gpus) > 1 else ""
        where = f"GPU{plural} {','.join(str(g) for g in worker.gpus)}"
        where += f" ({names})" if names else ""
    elif worker.gpu_name:
        where = f"{worker.device} ({worker.gpu_name})"
    else:
        where = worker.device
    text = f"{worker.state.value} on {where}, queue {worker.queue or '?'}"
    if worker.error:
        text += f": {worker.error}"
    return text


def check_workers(target: RedisTarget, timeout_s: float = 3.0) -> list[Check]:
    try:
        client = connect(target, max_connections=2, socket_timeout_s=timeout_s)
        try:
            workers = WorkerRegistry(client).live(forget=False)
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return []
    if not workers:
        return [Check("workers", Level.OK, "none heartbeating in this Redis yet")]
    checks = []
    for worker in workers:
        bad = worker.state in (WorkerState.FAILED, WorkerState.DEFUNCT)
        checks.append(
            Check(f"worker {worker.name}", Level.WARN if bad else Level.OK, describe_worker(worker))
        )
    return checks
