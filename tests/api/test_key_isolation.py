"""With API keys on: a key sees, cancels and replays only its own jobs; limits are per key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import redis
from flask import Flask

from internvl_queue.core.apikeys import ApiKeyStore
from internvl_queue.core.settings import Settings
from tests.api.lifecycle_helpers import json_body


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _two_keys(redis_client: redis.Redis) -> tuple[dict[str, str], dict[str, str]]:
    keys = ApiKeyStore(redis_client)
    return _bearer(keys.create("alice")[1]), _bearer(keys.create("bob")[1])


def test_another_keys_job_is_404_for_read_and_cancel(  # type: ignore[no-untyped-def]
    client, redis_client: redis.Redis
) -> None:
    alice, bob = _two_keys(redis_client)
    job = client.post("/v1/jobs", json=json_body(), headers=alice).json
    for method, path in (("get", ""), ("get", "?wait=1"), ("post", "/cancel")):
        reply = getattr(client, method)(f"/v1/jobs/{job['id']}{path}", headers=bob)
        assert reply.status_code == 404, (method, path)
        assert reply.json["error"]["code"] == "job_not_found"
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice).json["status"] == "queued"
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice).status_code == 200
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 401


def test_idempotency_keys_are_scoped_per_api_key(  # type: ignore[no-untyped-def]
    client, redis_client: redis.Redis
) -> None:
    alice, bob = _two_keys(redis_client)
    same = {"Idempotency-Key": "order-7"}
    first = client.post("/v1/jobs", json=json_body(), headers={**alice, **same})
    other = client.post("/v1/jobs", json=json_body("other"), headers={**bob, **same})
    assert other.status_code == 202  # not a 422: bob's key space is his own
    assert other.json["id"] != first.json["id"]
    replay = client.post("/v1/jobs", json=json_body(), headers={**alice, **same})
    assert replay.json["id"] == first.json["id"]


def test_the_submit_rate_limit_is_per_key_with_retry_after(
    make_app: Callable[..., Flask], settings: Settings, redis_client: redis.Redis
) -> None:
    client = make_app(replace(settings, rate_limit_jobs=2, rate_limit_window_s=60)).test_client()
    alice, bob = _two_keys(redis_client)
    for _ in range(2):
        assert client.post("/v1/jobs", json=json_body(), headers=alice).status_code == 202
    limited = client.post("/v1/jobs", json=json_body(), headers=alice)
    assert limited.status_code == 429
    assert limited.json["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert client.post("/v1/jobs", json=json_body(), headers=bob).status_code == 202
