"""``/healthz`` (the process answers) and ``/readyz`` (Redis answers, a worker of this API's queue
has its model loaded).

``/readyz`` lists every worker with its state (``loading``, ``ready``, ``failed``, ``defunct``) and
the queue it consumes, and says in one sentence (``message``) why the service is or is not ready:
which model a worker is loading and since when, why a worker could not load its model, why it
stopped serving, or that the workers there are consume other queues than this API's
(``INTERNVL_QUEUE``): jobs sent to a queue no worker consumes would wait for ever. It
also says whether API keys are required (``"auth": "api_keys"``, always so with
``INTERNVL_AUTH=required``) or the API runs open (``"open"``); ``"unknown"`` when Redis does not
answer. Neither endpoint needs a key.
"""

from __future__ import annotations

import time

import redis
from flask import Blueprint, Response, jsonify

from ..core.workers import WorkerInfo, WorkerState
from .auth import auth_state
from .services import services

__all__ = ["health"]

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz() -> tuple[Response, int]:
    svc = services()
    try:
        svc.store.redis.ping()
        workers = svc.workers.live()
        auth = auth_state(svc.api_keys, svc.settings.auth)
        redis_ok = True
    except redis.RedisError:
        workers, redis_ok, auth = [], False, "unknown"
    queue = svc.settings.queue_name
    ours = [w for w in workers if w.queue == queue]
    ready = redis_ok and any(w.state is WorkerState.READY for w in ours)
    body = {
        "status": "ready" if ready else "not_ready",
        "message": _explain(redis_ok, queue, ours, workers),
        "queue": queue,
        "redis": redis_ok,
        "workers": [w.to_public() for w in workers],
        "auth": auth,
    }
    return jsonify(body), 200 if ready else 503


def _explain(redis_ok: bool, queue: str, ours: list[WorkerInfo], every: list[WorkerInfo]) -> str:
    """One sentence an operator can act on (``ours``: the workers of this API's queue)."""
    if not redis_ok:
        return "Redis does not answer: check REDIS_URL and that Redis runs"
    if every and not ours:
        others = sorted({w.queue or "unknown (an older worker)" for w in every})
        return (
            f"no worker consumes this API's queue {queue!r} (INTERNVL_QUEUE): the {len(every)} "
            f"running consume {', '.join(others)}; start a worker with INTERNVL_QUEUE={queue}, "
            "or set the API's INTERNVL_QUEUE to theirs"
        )
    workers = ours
    by_state: dict[WorkerState, list[WorkerInfo]] = {}
    for w in workers:
        by_state.setdefault(w.state, []).append(w)
    if ready := by_state.get(WorkerState.READY):
        # Still ready: jobs are accepted and wait for them; the consumer is back within seconds
        # of the broker (a Redis restart, a failover), and the operator sees why none start.
        if away := [w for w in ready if w.consuming is False]:
            return (
                f"{len(ready)} worker(s) ready on queue {queue!r}; {len(away)} of them not "
                "taking jobs now: reconnecting to the broker (Redis)"
            )
        return f"{len(ready)} worker(s) ready on queue {queue!r}"
    if loading := by_state.get(WorkerState.LOADING):
        w = loading[0]
        since = max(time.time() - w.since, 0)
        return f"no worker is ready yet: {w.name} is loading {w.model} (for {since:.0f} s)"
    if failed := by_state.get(WorkerState.FAILED):
        return f"no worker is ready: {failed[0].name} could not load its model: {failed[0].error}"
    if defunct := by_state.get(WorkerState.DEFUNCT):
        w = defunct[0]
        why = f"stopped serving ({w.error}); its supervisor restarts it"
        return f"no worker is ready: {w.name} {why}"
    return "no worker is running: start one (internvl-queue worker)"
