"""``priority`` on POST /v1/jobs: stored, shown, sent to its lane's broker list, and the per-key
quota of high jobs (``INTERNVL_MAX_HIGH_PER_KEY``). The Flask app against a real Redis and broker;
no worker consumes, so jobs stay queued."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import replace

import redis
from flask import Flask

from internvl_queue import broker_layout as broker
from internvl_queue.core.apikeys import ApiKeyStore
from internvl_queue.core.settings import Settings
from tests.images import photo

JPEG = photo(32, 32, seed=3)


def _json(priority: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "question": "What is this?",
        "images": [{"data": base64.b64encode(JPEG).decode()}],
    }
    if priority is not None:
        body["priority"] = priority
    return body


def _lanes(client: redis.Redis, settings: Settings) -> list[int]:
    q = settings.queue_name
    return [broker.queue_length(client, name) for name in (f"{q}.high", q, f"{q}.low")]


def test_priority_is_stored_shown_and_routed_to_its_lane(
    client, redis_client: redis.Redis, settings: Settings
) -> None:
    high = client.post("/v1/jobs", json=_json("high"))
    normal = client.post("/v1/jobs", json=_json())
    low = client.post(
        "/v1/jobs",
        data={"question": "What?", "priority": "low", "image": [(io.BytesIO(JPEG), "a.jpg")]},
    )
    assert [r.status_code for r in (high, normal, low)] == [202, 202, 202], low.json
    assert [r.json["priority"] for r in (high, normal, low)] == ["high", "normal", "low"]
    assert client.get(f"/v1/jobs/{high.json['id']}").json["priority"] == "high"
    assert _lanes(redis_client, settings) == [1, 1, 1]


def test_an_unknown_priority_is_refused_in_one_sentence(client, redis_client: redis.Redis) -> None:
    for value in ("urgent", "HIGH", 1):
        reply = client.post("/v1/jobs", json=_json(value))  # type: ignore[arg-type]
        assert reply.status_code == 422, reply.json
        error = reply.json["error"]
        assert error["code"] == "invalid_parameter"
        assert error["message"].startswith("priority must be one of high, normal or low")


def test_a_key_over_its_high_quota_gets_429_and_may_still_submit_other_lanes(
    make_app: Callable[..., Flask], settings: Settings, redis_client: redis.Redis
) -> None:
    client = make_app(replace(settings, max_high_per_key=2, auth="required")).test_client()
    keys = ApiKeyStore(redis_client)
    _, first = keys.create("first")
    _, second = keys.create("second")
    as_first = {"Authorization": f"Bearer {first}"}

    held = [client.post("/v1/jobs", json=_json("high"), headers=as_first) for _ in range(2)]
    assert [r.status_code for r in held] == [202, 202]
    refused = client.post("/v1/jobs", json=_json("high"), headers=as_first)
    assert refused.status_code == 429, refused.json
    assert refused.json["error"]["code"] == "priority_quota_exceeded"
    assert "already has 2 high-priority jobs queued or running" in refused.json["error"]["message"]
    assert _lanes(redis_client, settings)[0] == 2  # the refused one sent nothing

    # Other lanes, and other keys, are not limited by it.
    assert client.post("/v1/jobs", json=_json("normal"), headers=as_first).status_code == 202
    assert (
        client.post(
            "/v1/jobs", json=_json("high"), headers={"Authorization": f"Bearer {second}"}
        ).status_code
        == 202
    )

    # A high job that ends frees its slot.
    assert client.post(f"/v1/jobs/{held[0].json['id']}/cancel", headers=as_first).status_code in (
        200,
        202,
    )
    assert client.post("/v1/jobs", json=_json("high"), headers=as_first).status_code == 202
    again = client.post("/v1/jobs", json=_json("high"), headers=as_first)
    assert again.json["error"]["code"] == "priority_quota_exceeded"
