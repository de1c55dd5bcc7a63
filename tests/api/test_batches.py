"""POST /v1/batches and its reads, on a real Redis, with the jobs moved as a worker would move
them (``JobStore.claim`` / ``finish``); the end-to-end run on a real worker is
tests/api/test_batch_run.py."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from internvl_queue.core.apikeys import ApiKeyStore
from internvl_queue.core.keys import outbox_key, queued_batch_key
from internvl_queue.core.outbox import Outbox
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from tests.api.lifecycle_helpers import JPEG

IMAGE = [{"data": base64.b64encode(JPEG).decode()}]


def line(custom_id: str, **fields: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "question": "What is this?", "images": IMAGE, **fields}


def jsonl(lines: list[Any]) -> bytes:
    return "\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines).encode()


def results(client: FlaskClient, batch_id: str, **headers: str) -> list[dict[str, Any]]:
    reply = client.get(f"/v1/batches/{batch_id}/results", headers=headers)
    assert reply.status_code == 200, reply.data
    assert reply.mimetype == "application/jsonl"
    return [json.loads(row) for row in reply.data.decode().splitlines()]


def test_a_jsonl_batch_is_validated_per_line_and_the_valid_lines_become_jobs(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = jsonl(
        [
            line("a"),
            "{not json",
            line("b", max_new_tokens=0),
            line("a"),  # duplicate
            {"question": "no id", "images": IMAGE},
            line("c", images=[{"data": base64.b64encode(b"not an image").decode()}]),
            "",
            line("d", max_new_tokens=4),
        ]
    )
    reply = client.post("/v1/batches", data=body, content_type="application/jsonl")
    assert reply.status_code == 202, reply.json
    batch = reply.json
    assert reply.headers["Location"] == f"/v1/batches/{batch['id']}"
    assert batch["status"] == "queued"
    assert batch["counts"] == {
        "total": 7,
        "invalid": 5,
        "jobs": 2,
        "pending": 2,
        "succeeded": 0,
        "failed": 0,
        "canceled": 0,
    }
    assert [(e["line"], e["custom_id"], e["code"]) for e in batch["errors"]] == [
        (2, None, "invalid_json"),
        (3, "b", "invalid_parameter"),
        (4, "a", "duplicate_custom_id"),
        (5, None, "invalid_custom_id"),
        (6, "c", "unsupported_image"),
    ]
    rows = results(client, batch["id"])
    assert [(r["custom_id"], r["status"]) for r in rows] == [
        ("a", "queued"),
        (None, "invalid"),
        ("b", "invalid"),
        ("a", "invalid"),
        (None, "invalid"),
        ("c", "invalid"),
        ("d", "queued"),
    ]
    job = client.get(f"/v1/jobs/{rows[-1]['job_id']}").json
    assert job["batch"] == {"id": batch["id"], "custom_id": "d"}
    assert job["params"]["max_new_tokens"] == 4
    assert redis_client.zcard(queued_batch_key()) == 2


@pytest.mark.parametrize("shape", ["array", "envelope", "ndjson"])
def test_the_json_array_and_envelope_shapes(client: FlaskClient, shape: str) -> None:
    lines = [line("x"), line("y")]
    if shape == "array":
        reply = client.post("/v1/batches", json=lines)
    elif shape == "envelope":
        reply = client.post("/v1/batches", json={"requests": lines, "metadata": {"run": 7}})
    else:
        reply = client.post("/v1/batches", data=jsonl(lines), content_type="application/x-ndjson")
    assert reply.status_code == 202, reply.json
    assert reply.json["counts"]["jobs"] == 2


def test_all_or_nothing_refuses_the_batch_with_the_report(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    requests = [line("ok"), line("bad", question="")]
    reply = client.post("/v1/batches", json={"requests": requests, "all_or_nothing": True})
    assert reply.status_code == 422, reply.json
    assert reply.json["error"]["code"] == "batch_invalid"
    assert reply.json["errors"] == [
        {
            "line": 2,
            "custom_id": "bad",
            "code": "invalid_question",
            "message": "the question must be a non-empty string",
        }
    ]
    assert redis_client.zcard(queued_batch_key()) == 0  # nothing was submitted
    # The same in the query string, for JSON Lines.
    reply = client.post(
        "/v1/batches?all_or_nothing=true",
        data=jsonl([line("ok"), "nope"]),
        content_type="application/jsonl",
    )
    assert reply.status_code == 422 and reply.json["errors"][0]["line"] == 2


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"", "application/jsonl", 400, "empty_batch"),
        (b"{}", "application/json", 400, "invalid_json"),
        (b"[1", "application/json", 400, "invalid_json"),
        (b"x", "text/plain", 415, "unsupported_media_type"),
        (b'{"requests": [], "extra": 1}', "application/json", 422, "invalid_parameter"),
    ],
)
def test_an_unreadable_batch_is_refused(
    client: FlaskClient, body: bytes, content_type: str, status: int, code: str
) -> None:
    reply = client.post("/v1/batches", data=body, content_type=content_type)
    assert reply.status_code == status, reply.json
    assert reply.json["error"]["code"] == code


@pytest.mark.parametrize("content_type", ["application/jsonl", "application/json"])
def test_a_mistyped_query_option_is_refused_not_ignored(
    client: FlaskClient, redis_client: redis.Redis, content_type: str
) -> None:
    body = jsonl([line("ok")]) if content_type == "application/jsonl" else json.dumps([line("ok")])
    reply = client.post("/v1/batches?all_or_nothin=true", data=body, content_type=content_type)
    assert reply.status_code == 422, reply.json
    assert reply.json["error"]["code"] == "invalid_parameter"
    assert "'all_or_nothin'" in reply.json["error"]["message"]
    assert "all_or_nothing, webhook_url" in reply.json["error"]["message"]
    assert redis_client.zcard(queued_batch_key()) == 0  # nothing was submitted


def test_too_many_lines_are_refused(make_app, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    client = make_app(replace(settings, max_batch_requests=2)).test_client()
    reply = client.post("/v1/batches", json=[line("a"), line("b"), line("c")])
    assert reply.status_code == 422
    assert reply.json["error"]["code"] == "too_many_batch_requests"


def test_counts_follow_the_jobs_and_the_batch_completes_once_with_its_webhook(
    make_app, settings: Settings, redis_client: redis.Redis
) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    client = make_app(
        replace(
            settings,
            webhook_secrets="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            webhook_allowed_cidrs="127.0.0.0/8",
        )
    ).test_client()
    reply = client.post(
        "/v1/batches",
        json={"requests": [line("a"), line("b"), line("c")], "webhook_url": "http://127.0.0.1:9/h"},
    )
    batch = reply.json
    ids = [row["job_id"] for row in results(client, batch["id"])]
    store = JobStore(redis_client, retention_s=settings.job_retention_s)
    first = store.claim(ids[0], max_attempts=3).job
    assert first is not None
    assert client.get(f"/v1/batches/{batch['id']}").json["status"] == "running"
    store.finish(first, JobStatus.SUCCEEDED, result={"answer": "yes"})
    second = store.claim(ids[1], max_attempts=3).job
    assert second is not None
    store.finish(second, JobStatus.FAILED, error={"code": "model_error", "message": "boom"})
    # A duplicate delivery's finish stores nothing and counts nothing.
    assert store.finish(second, JobStatus.SUCCEEDED, result={"answer": "x"}) is None
    partial = client.get(f"/v1/batches/{batch['id']}").json
    assert partial["status"] == "running" and partial["finished_at"] is None
    assert partial["counts"]["succeeded"] == 1 and partial["counts"]["failed"] == 1
    assert partial["counts"]["pending"] == 1
    rows = results(client, batch["id"])
    assert [r["status"] for r in rows] == ["succeeded", "failed", "queued"]
    assert rows[0]["result"] == {"answer": "yes"} and rows[1]["error"]["code"] == "model_error"
    assert _batch_events(redis_client) == []
    third = store.claim(ids[2], max_attempts=3).job
    assert third is not None
    store.finish(third, JobStatus.SUCCEEDED, result={"answer": "no"})
    done = client.get(f"/v1/batches/{batch['id']}").json
    assert done["status"] == "completed" and done["finished_at"] is not None
    assert done["counts"] == {
        "total": 3,
        "invalid": 0,
        "jobs": 3,
        "pending": 0,
        "succeeded": 2,
        "failed": 1,
        "canceled": 0,
    }
    events = _batch_events(redis_client)
    assert [e["type"] for e in events] == ["batch.completed"]
    assert events[0]["data"]["counts"]["succeeded"] == 2


def _batch_events(client: redis.Redis) -> list[dict[str, Any]]:
    outbox = Outbox(client, lease_s=10, retention_s=3600)
    found = []
    for event_id in client.zrange(outbox_key(), 0, -1):
        event = outbox.load(event_id.decode())
        if event is not None and event.type.startswith("batch."):
            found.append(json.loads(event.body))
    return found


def test_cancel_cancels_queued_jobs_and_asks_running_ones_to_stop(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    batch = client.post("/v1/batches", json=[line(str(i)) for i in range(5)]).json
    ids = [row["job_id"] for row in results(client, batch["id"])]
    store = JobStore(redis_client, retention_s=settings.job_retention_s)
    running = store.claim(ids[0], max_attempts=3).job
    assert running is not None
    reply = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert reply.status_code == 202, reply.json
    assert reply.json["counts"]["canceled"] == 4 and reply.json["counts"]["pending"] == 1
    assert reply.json["cancel_requested_at"] is not None
    assert redis_client.zcard(queued_batch_key()) == 0
    store.finish(running, JobStatus.SUCCEEDED, result={"answer": "late"})
    done = client.get(f"/v1/batches/{batch['id']}").json
    assert done["status"] == "canceled"
    assert done["counts"]["canceled"] == 5  # the running one too: its cancel was asked
    again = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert again.status_code == 409 and again.json["error"]["code"] == "batch_already_finished"


def test_a_batch_without_a_valid_line_is_failed_at_once(client: FlaskClient) -> None:
    reply = client.post("/v1/batches", json=[{"custom_id": "a"}])
    assert reply.status_code == 202
    assert reply.json["status"] == "failed" and reply.json["finished_at"] is not None


def test_another_keys_batch_is_404_everywhere(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    keys = ApiKeyStore(redis_client)
    alice = {"Authorization": f"Bearer {keys.create('alice')[1]}"}
    bob = {"Authorization": f"Bearer {keys.create('bob')[1]}"}
    batch = client.post("/v1/batches", json=[line("a")], headers=alice).json
    for method, path in (("get", ""), ("get", "/results"), ("post", "/cancel")):
        reply = getattr(client, method)(f"/v1/batches/{batch['id']}{path}", headers=bob)
        assert reply.status_code == 404, (method, path)
        assert reply.json["error"]["code"] == "batch_not_found"
    job_id = results(client, batch["id"], **alice)[0]["job_id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).json["batch"]["custom_id"] == "a"
    assert client.get(f"/v1/jobs/{job_id}", headers=bob).status_code == 404


def test_batch_jobs_do_not_fill_the_single_job_queue(make_app, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    client = make_app(replace(settings, max_queued_jobs=2, max_queued_batch_jobs=3)).test_client()
    assert client.post("/v1/batches", json=[line(str(i)) for i in range(3)]).status_code == 202
    single = {"question": "q", "images": IMAGE}
    assert client.post("/v1/jobs", json=single).status_code == 202
    assert client.post("/v1/jobs", json=single).status_code == 202
    assert client.post("/v1/jobs", json=single).json["error"]["code"] == "queue_full"
    full = client.post("/v1/batches", json=[line("x")])
    assert full.status_code == 503 and full.json["error"]["code"] == "queue_full"


def test_batch_lines_run_low_by_default_normal_on_request_and_never_high(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = jsonl([line("a"), line("b", priority="normal"), line("c", priority="high")])
    reply = client.post("/v1/batches", data=body, content_type="application/jsonl")
    assert reply.status_code == 202, reply.json
    batch = reply.json
    assert [(e["custom_id"], e["code"]) for e in batch["errors"]] == [("c", "invalid_parameter")]
    assert "one by one" in batch["errors"][0]["message"]
    store = JobStore(redis_client, retention_s=100)
    lanes = {
        r["custom_id"]: store.get(r["job_id"]).priority.value  # type: ignore[union-attr]
        for r in results(client, batch["id"])
        if r["job_id"]
    }
    assert lanes == {"a": "low", "b": "normal"}
