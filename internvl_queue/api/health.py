"""``/healthz`` (the process answers) and ``/readyz`` (Redis answers, a model is loaded)."""

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
        redis_ok = True
    except redis.RedisError:
        workers, redis_ok = [], False
    ready = redis_ok and bool(workers)
    body = {"status": "ready" if ready else "not_ready", "redis": redis_ok, "workers": workers}
    return jsonify(body), 200 if ready else 503
