"""Idempotency-Key on POST /v1/jobs: replay of the same validated request, 422 for another one,
and never a 409 (the key is bound with the job, so there is no "in flight" to wait out)."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis
import requests
from flask import Flask

from internvl_queue.core.keys import dispatching_key, job_key, queued_key
from internvl_queue.core.settings import Settings
from tests.api.lifecycle_helpers import JPEG, json_body


def _post(client, body: dict, key: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})


def _post_form(client, key: str, **fields: str):  # type: ignore[no-untyped-def]
    data = {"question": "What is this?", **fields, "image": [(io.BytesIO(JPEG), "a.jpg")]}
    return client.post("/v1/jobs", data=data, headers={"Idempotency-Key": key})


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


def test_the_same_request_as_json_and_as_a_form_replays(  # type: ignore[no-untyped-def]
    client, redis_client: redis.Redis
) -> None:
    """Issue 20: JSON ``max_new_tokens: 2`` then multipart ``"2"`` under one key got 422."""
    fields = {"max_new_tokens": 2, "metadata": {"ref": "a-1"}}
    first = _post(client, json_body(**fields), "same-request")
    assert first.status_code == 202, first.json
    again = _post_form(client, "same-request", max_new_tokens="2", metadata='{"ref": "a-1"}')
    assert again.status_code == 202, again.json
    assert again.headers["Idempotency-Replayed"] == "true"
    assert again.json["id"] == first.json["id"]
    assert redis_client.zcard(queued_key()) == 1


def test_same_key_different_payload_is_422(client) -> None:  # type: ignore[no-untyped-def]
    assert _post(client, json_body("one question"), "k").status_code == 202
    for other in (json_body("another question"), json_body("one question", max_new_tokens=3)):
        reply = _post(client, other, "k")
        assert reply.status_code == 422
        assert reply.json["error"]["code"] == "idempotency_key_reused"
        assert "new key" in reply.json["error"]["message"]


def test_a_refused_request_does_not_hold_its_key(client) -> None:  # type: ignore[no-untyped-def]
    bad = _post(client, json_body(max_new_tokens=0), "fix-me")
    assert bad.status_code == 422
    fixed = _post(client, json_body(max_new_tokens=8), "fix-me")
    assert fixed.status_code == 202
    assert "Idempotency-Replayed" not in fixed.headers


def test_a_key_whose_job_expired_creates_a_new_job(  # type: ignore[no-untyped-def]
    client, redis_client: redis.Redis
) -> None:
    first = _post(client, json_body(), "outlived")
    redis_client.delete(job_key(first.json["id"]))  # its retention ended before the key's
    again = _post(client, json_body("another question"), "outlived")
    assert again.status_code == 202
    assert "Idempotency-Replayed" not in again.headers
    assert again.json["id"] != first.json["id"]
    replay = _post(client, json_body("another question"), "outlived")
    assert replay.json["id"] == again.json["id"]


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
        assert again.status_code == 202  # as docs/api.md says, not 200
        assert again.headers["Idempotency-Replayed"] == "true"
        assert again.headers["Location"] == f"/v1/jobs/{first.json['id']}"
        assert again.json["status"] == "canceled"


def test_a_job_the_broker_refused_is_kept_for_a_reaper_and_its_key_replays_it(
    make_app: Callable[..., Flask], settings: Settings, redis_client: redis.Redis
) -> None:
    class RefusingDispatcher:
        def dispatch(self, job_id: str, priority: object = None) -> None:
            raise ConnectionError("broker down")

    client = make_app(settings, dispatcher=RefusingDispatcher()).test_client()
    first = _post(client, json_body(), "broker-down")
    assert first.status_code == 202, first.json  # stored: accepted, whatever the broker said
    job_id = first.json["id"]
    assert first.json["status"] == "queued"
    # Its message is still owed: a reaper sends it once due (DISPATCH_GRACE_S after creation).
    assert redis_client.zscore(dispatching_key(), job_id) is not None
    again = _post(client, json_body(), "broker-down")
    assert (again.status_code, again.json["id"]) == (202, job_id)
    assert again.headers["Idempotency-Replayed"] == "true"
    assert redis_client.zcard(queued_key()) == 1


def test_requests_with_one_key_at_once_make_one_job_and_no_409(  # type: ignore[no-untyped-def]
    live_api: str, redis_client: redis.Redis
) -> None:
    """The old reservation answered ``409 idempotency_key_in_flight`` to every request that came
    while the first was being processed; now each gets the one job."""
    body = json_body()

    def submit(_: int) -> tuple[int, str, str]:
        reply = requests.post(
            f"{live_api}/v1/jobs", json=body, headers={"Idempotency-Key": "at-once"}, timeout=30
        )
        return (
            reply.status_code,
            reply.json().get("id", ""),
            reply.headers.get("Idempotency-Replayed", ""),
        )

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(submit, range(8)))
    assert {status for status, _, _ in replies} == {202}, replies
    assert len({job_id for _, job_id, _ in replies}) == 1
    assert [replayed for _, _, replayed in replies].count("true") == 7
    assert redis_client.zcard(queued_key()) == 1
