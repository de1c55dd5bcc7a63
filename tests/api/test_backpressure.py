"""The global caps on queued jobs and their image bytes (503 queue_full with Retry-After)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace

import redis
from flask import Flask

from internvl_queue.core.settings import Settings
from tests.api.lifecycle_helpers import json_body
from tests.images import photo


def test_a_full_queue_refuses_with_503_and_retry_after(
    make_app: Callable[..., Flask], settings: Settings
) -> None:
    client = make_app(replace(settings, max_queued_jobs=2)).test_client()
    first = client.post("/v1/jobs", json=json_body()).json
    assert client.post("/v1/jobs", json=json_body()).status_code == 202
    refused = client.post("/v1/jobs", json=json_body())
    assert refused.status_code == 503
    assert refused.json["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) > 0
    # A job leaving the queue makes room again.
    client.post(f"/v1/jobs/{first['id']}/cancel")
    assert client.post("/v1/jobs", json=json_body()).status_code == 202


def test_queue_positions_are_reported_while_queued(client) -> None:  # type: ignore[no-untyped-def]
    ids = [client.post("/v1/jobs", json=json_body()).json["id"] for _ in range(3)]
    assert [client.get(f"/v1/jobs/{i}").json["queue_position"] for i in ids] == [1, 2, 3]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    assert client.get(f"/v1/jobs/{ids[0]}").json["queue_position"] is None
    assert client.get(f"/v1/jobs/{ids[2]}").json["queue_position"] == 2


def test_every_job_says_when_it_expires(client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from datetime import datetime

    job = client.post("/v1/jobs", json=json_body()).json
    created = datetime.fromisoformat(job["created_at"])
    expires = datetime.fromisoformat(job["expires_at"])
    assert round((expires - created).total_seconds()) == settings.job_retention_s


def test_queued_image_bytes_have_a_budget(
    make_app: Callable[..., Flask], settings: Settings, redis_client: redis.Redis
) -> None:
    """INTERNVL_MAX_QUEUED_BYTES bounds the image bytes of queued jobs held in Redis: over it a
    submit gets 503 queue_full; a job leaving the queue frees its bytes."""
    size = len(photo(64, 64, seed=1))
    client = make_app(replace(settings, max_queued_bytes=2 * size + size // 2)).test_client()

    def submit(seed: int):  # type: ignore[no-untyped-def]
        image = photo(64, 64, seed=1)
        return client.post(
            "/v1/jobs", data={"question": f"q{seed}", "image": (io.BytesIO(image), "a.jpg")}
        )

    first, second = submit(1), submit(2)
    assert (first.status_code, second.status_code) == (202, 202)
    refused = submit(3)
    assert refused.status_code == 503, refused.json
    assert refused.json["error"]["code"] == "queue_full"
    assert "INTERNVL_MAX_QUEUED_BYTES" in refused.json["error"]["message"]
    assert int(refused.headers["Retry-After"]) > 0
    assert int(redis_client.zcard("iq:queued")) == 2  # nothing stored for the refused one
    client.post(f"/v1/jobs/{first.json['id']}/cancel")
    assert submit(4).status_code == 202
