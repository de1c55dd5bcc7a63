"""Idempotency-Key on POST /v1/jobs: replay, 422 for another payload, 409 while in flight."""

from __future__ import annotations

import redis

from internvl_queue.core.idempotency import IdempotencyStore
from internvl_queue.core.keys import queued_key
from internvl_queue.core.submission import Submission
from tests.api.lifecycle_helpers import JPEG, json_body


def _post(client, body: dict, key: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})


def test_same_key_same_payload_replays_the_original_job(  # type: ignore[no-untyped-def]
    client, redis_client: redis.Redis
) -> None:
    first = _post(client, json_body(max_new_tokens=8), "order-1")
    assert first.status_code == 202
    assert "Idempotency-Replayed" not in first.headers
    again = _post(client, json_body(max_new_tokens=8), "order-1")
    assert again.status_code == 202
    assert again.headers["Idempotency-Replayed"] == "true"
    assert again.json["id"] == first.json["id"]
    assert redis_client.zcard(queued_key()) == 1  # one job, not two
    # Without the key, the same payload is a new job.
    assert client.post("/v1/jobs", json=json_body(max_new_tokens=8)).json["id"] != first.json["id"]


def test_same_key_different_payload_is_422(client) -> None:  # type: ignore[no-untyped-def]
    assert _post(client, json_body("one question"), "k").status_code == 202
    reply = _post(client, json_body("another question"), "k")
    assert reply.status_code == 422
    assert reply.json["error"]["code"] == "idempotency_key_reused"


def test_a_key_still_in_flight_is_409(  # type: ignore[no-untyped-def]
    client, redis_client: redis.Redis
) -> None:
    body = json_body()
    # Another request holds the key: it reserved it and has not created its job yet.
    held = Submission(question=body["question"], images=[JPEG]).fingerprint()
    IdempotencyStore(redis_client, ttl_s=100).reserve("", "busy", held)
    reply = _post(client, body, "busy")
    assert reply.status_code == 409
    assert reply.json["error"]["code"] == "idempotency_key_in_flight"


def test_a_refused_request_does_not_hold_its_key(client) -> None:  # type: ignore[no-untyped-def]
    bad = _post(client, json_body(max_new_tokens=0), "fix-me")
    assert bad.status_code == 422
    fixed = _post(client, json_body(max_new_tokens=8), "fix-me")
    assert fixed.status_code == 202


def test_an_unusable_key_is_400(client) -> None:  # type: ignore[no-untyped-def]
    reply = _post(client, json_body(), "has spaces in it")
    assert reply.status_code == 400
    assert reply.json["error"]["code"] == "invalid_idempotency_key"


def test_a_replay_of_a_finished_job_is_202_with_its_final_state(client) -> None:  # type: ignore[no-untyped-def]
    first = _post(client, json_body(), "finished-1")
    assert client.post(f"/v1/jobs/{first.json['id']}/cancel").json["status"] == "canceled"
    for prefer in ({}, {"Prefer": "wait=5"}):
        again = client.post(
            "/v1/jobs", json=json_body(), headers={"Idempotency-Key": "finished-1", **prefer}
        )
        assert again.status_code == 202  # as the README says, not 200
        assert again.headers["Idempotency-Replayed"] == "true"
        assert again.headers["Location"] == f"/v1/jobs/{first.json['id']}"
        assert again.json["status"] == "canceled"
