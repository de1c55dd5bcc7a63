"""``/healthz`` (the process answers) and ``/readyz`` (Redis answers, a model is loaded).

``/readyz`` also says whether API keys are required (``"auth": "api_keys"``) or the API runs
open (``"open"``); ``"unknown"`` when Redis does not answer. Neither endpoint needs a key.
"""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify

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
        workers = [w.to_public() for w in svc.workers.live()]
        auth = "api_keys" if svc.api_keys.any_active() else "open"
        redis_ok = True
    except redis.RedisError:
        workers, redis_ok, auth = [], False, "unknown"
    ready = redis_ok and bool(workers)
    body = {
        "status": "ready" if ready else "not_ready",
        "redis": redis_ok,
        "workers": workers,
        "auth": auth,
    }
    return jsonify(body), 200 if ready else 503
