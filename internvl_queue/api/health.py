"""``/healthz`` (the process answers) and ``/readyz`` (Redis answers, a model is loaded).

``/readyz`` lists every worker with its state (``loading``, ``ready``, ``failed``) and says in one
sentence (``message``) why the service is or is not ready: which model a worker is loading and
since when, or why a worker could not load its model. It also says whether API keys are required
(``"auth": "api_keys"``) or the API runs open (``"open"``); ``"unknown"`` when Redis does not
answer. Neither endpoint needs a key.
"""

from __future__ import annotations

import time

import redis
from flask import Blueprint, Response, jsonify

from ..core.workers import WorkerInfo, WorkerState
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
        auth = "api_keys" if svc.api_keys.any_active() else "open"
        redis_ok = True
    except redis.RedisError:
        workers, redis_ok, auth = [], False, "unknown"
    ready = redis_ok and any(w.state is WorkerState.READY for w in workers)
    body = {
        "status": "ready" if ready else "not_ready",
        "message": _explain(redis_ok, workers),
        "redis": redis_ok,
        "workers": [w.to_public() for w in workers],
        "auth": auth,
    }
    return jsonify(body), 200 if ready else 503


def _explain(redis_ok: bool, workers: list[WorkerInfo]) -> str:
    """One sentence an operator can act on."""
    if not redis_ok:
        return "Redis does not answer: check REDIS_URL and that Redis runs"
    ready = [w for w in workers if w.state is WorkerState.READY]
    if ready:
        return f"{len(ready)} worker(s) ready"
    loading = [w for w in workers if w.state is WorkerState.LOADING]
    if loading:
        w = loading[0]
        return (
            f"no worker is ready yet: {w.name} is loading {w.model} "
            f"(for {max(time.time() - w.since, 0):.0f} s)"
        )
    failed = [w for w in workers if w.state is WorkerState.FAILED]
    if failed:
        return f"no worker is ready: {failed[0].name} could not load its model: {failed[0].error}"
    return "no worker is running: start one (internvl-queue worker)"
