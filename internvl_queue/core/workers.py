"""Worker heartbeats in Redis: who is up, in which state, with which model on which device.

Each worker refreshes a hash with a short TTL; a worker that dies simply stops refreshing it and
drops out of the listing, with no clean-up needed. A worker heartbeats from the moment it starts
loading its model (``loading``), so that ``/readyz`` can say what it waits for; one that cannot
load its model leaves a ``failed`` entry, with the reason, for a few minutes after it exits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

import redis

from .keys import worker_key, workers_key
from .redis_client import HashFields

__all__ = ["WorkerInfo", "WorkerRegistry", "WorkerState"]


class WorkerState(StrEnum):
    LOADING = "loading"  # loading its model; takes no job yet
    READY = "ready"  # model loaded, taking jobs
    FAILED = "failed"  # could not load its model and exited (``error`` says why)
    # Its GPU failed for good or hangs: it takes no job, hands back the ones it held and exits
    # for its supervisor to restart it (``error`` says why).
    DEFUNCT = "defunct"


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    pid: int
    model: str
    device: str
    gpu_name: str | None
    loaded_at: float
    last_seen: float
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    redeliveries_ignored: int = 0
    engine: dict[str, Any] | None = None  # batching counters: batch sizes, jobs/s, GPU memory
    # The host's GPU this worker is pinned to (``worker --gpus``); None for a single worker.
    gpu_index: int | None = None
    state: WorkerState = WorkerState.READY
    since: float = 0.0  # when the worker entered its state
    error: str | None = None  # why a failed worker failed
    threads: int = 0  # the worker process's threads (bounded whatever its concurrency)
    # The broker queue it consumes (its INTERNVL_QUEUE): an API is ready only when a worker of
    # its own queue is. None from a worker that predates the field.
    queue: str | None = None
    # Whether its Celery consumer is connected to the broker now (False while it reconnects after
    # a Redis restart: loaded, but taking no job). None: not known (a worker outside Celery).
    consuming: bool | None = None
    # Its GPU's memory in bytes (allocated, reserved, used, total: worker/gpu_memory.py), summed
    # over its GPUs when it spans several; None on the CPU.
    gpu_memory: dict[str, int] | None = None
    # The host GPUs it owns (``worker --gpus``, with ``--gpus-per-worker``: its group), and the
    # name of each GPU its model is on, in the same order; None for a worker not started so /
    # not on CUDA.
    gpus: list[int] | None = None
    gpu_names: list[str] | None = None

    @property
    def jobs_done(self) -> int:
        return self.jobs_succeeded + self.jobs_failed

    def to_public(self) -> dict[str, object]:
        return {**asdict(self), "state": self.state.value, "jobs_done": self.jobs_done}


_INT_FIELDS = {"pid", "jobs_succeeded", "jobs_failed", "redeliveries_ignored", "threads"}
_FLOAT_FIELDS = {"loaded_at", "last_seen", "since"}
_JSON_FIELDS = ("engine", "gpu_memory", "gpus", "gpu_names")


def _encode(info: WorkerInfo) -> HashFields:
    encoded = {k: "" if v is None else str(v) for k, v in asdict(info).items()}
    for name in _JSON_FIELDS:
        encoded[name] = json.dumps(getattr(info, name))
    encoded["state"] = info.state.value
    return encoded


def _decode(raw: dict[bytes, bytes]) -> WorkerInfo:
    h = {k.decode(): v.decode() for k, v in raw.items()}
    values: dict[str, object] = {}
    for f in fields(WorkerInfo):
        text = h.get(f.name, "")
        if f.name in _INT_FIELDS:
            values[f.name] = int(text or 0)
        elif f.name == "gpu_index":
            values[f.name] = int(text) if text else None
        elif f.name in _FLOAT_FIELDS:
            values[f.name] = float(text or 0)
        elif f.name in _JSON_FIELDS:
            values[f.name] = json.loads(text) if text else None
        elif f.name == "consuming":
            values[f.name] = {"True": True, "False": False}.get(text)
        elif f.name == "state":
            values[f.name] = WorkerState(text or WorkerState.READY.value)
        else:
            values[f.name] = text or None
    return WorkerInfo(**values)  # type: ignore[arg-type]


class WorkerRegistry:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def publish(self, info: WorkerInfo, *, ttl_s: float) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(worker_key(info.name), mapping=_encode(info))
        pipe.pexpire(worker_key(info.name), int(ttl_s * 1000))
        pipe.sadd(workers_key(), info.name)
        pipe.execute()

    def remove(self, name: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(worker_key(name))
        pipe.srem(workers_key(), name)
        pipe.execute()

    def ready(self) -> list[WorkerInfo]:
        """Live workers with their model loaded (taking jobs)."""
        return [w for w in self.live() if w.state is WorkerState.READY]

    def live(self, *, forget: bool = True) -> list[WorkerInfo]:
        """Workers whose heartbeat has not expired, by name; forgets the ones that have
        (unless ``forget`` is False: a read-only look, such as a health check's)."""
        names = sorted(n.decode() for n in self.redis.smembers(workers_key()))  # type: ignore[union-attr]
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(worker_key(name))
        found: list[WorkerInfo] = []
        for name, raw in zip(names, pipe.execute(), strict=True):
            if raw:
                found.append(_decode(raw))
            elif forget:
                self.redis.srem(workers_key(), name)
        return found
