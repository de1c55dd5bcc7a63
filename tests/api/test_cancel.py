"""POST /v1/jobs/<id>/cancel: queued jobs at once, running ones through their worker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace

import redis
from flask import Flask

from internvl_queue.core.keys import outbox_key
from internvl_queue.core.outbox import Outbox
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from tests.api.lifecycle_helpers import json_body
from tests.api.test_webhook_submit import SECRET


def test_a_queued_job_is_canceled_at_once(client) -> None:  # type: ignore[no-untyped-def]
    job = client.post("/v1/jobs", json=json_body()).json
    asked = time.time()
    reply = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert reply.status_code == 200, reply.json
    assert reply.json["status"] == "canceled"
    assert reply.json["error"]["code"] == "canceled"
    stored = client.get(f"/v1/jobs/{job['id']}").json
    assert stored["status"] == "canceled"
    # When the cancel was asked, like a running job's; no later than it finished.
    assert stored["cancel_requested_at"] is not None
    assert stored["cancel_requested_at"] <= stored["finished_at"]
    assert stored["cancel_requested_at"] >= _iso(asked - 1)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))


def test_the_canceled_event_of_a_queued_job_says_when_it_was_asked(
    make_app: Callable[..., Flask], settings: Settings, redis_client: redis.Redis
) -> None:
    webhooked = replace(settings, webhook_secrets=SECRET, webhook_allowed_cidrs="127.0.0.0/8")
    client = make_app(webhooked).test_client()
    body = json_body(webhook_url="http://127.0.0.1:9/hook")
    job = client.post("/v1/jobs", json=body).json
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    outbox = Outbox(redis_client, lease_s=30, retention_s=3600)
    [event_id] = redis_client.zrange(outbox_key(), 0, -1)
    event = outbox.load(event_id.decode())
    assert event is not None and event.type == "job.canceled"
    data = json.loads(event.body)["data"]
    assert data["status"] == "canceled" and data["error"]["code"] == "canceled"
    assert data["cancel_requested_at"] is not None
    assert (
        data["cancel_requested_at"]
        == client.get(f"/v1/jobs/{job['id']}").json["cancel_requested_at"]
    )


def test_a_finished_job_answers_409(client) -> None:  # type: ignore[no-untyped-def]
    job = client.post("/v1/jobs", json=json_body()).json
    client.post(f"/v1/jobs/{job['id']}/cancel")
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert again.json["error"]["code"] == "job_already_finished"


def test_an_unknown_job_answers_404(client) -> None:  # type: ignore[no-untyped-def]
    reply = client.post("/v1/jobs/0123456789abcdef/cancel")
    assert reply.status_code == 404
    assert reply.json["error"]["code"] == "job_not_found"


def test_a_running_job_is_asked_to_stop_and_ends_canceled(  # type: ignore[no-untyped-def]
    client, redis_client: redis.Redis, settings: Settings
) -> None:
    job = client.post("/v1/jobs", json=json_body()).json
    store = JobStore(redis_client, retention_s=settings.job_retention_s)
    claim = store.claim(job["id"], max_attempts=3)  # as a worker would
    assert claim.job is not None
    reply = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert reply.status_code == 202, reply.json
    assert reply.json["status"] == "running"
    assert reply.json["cancel_requested_at"] is not None
    # Asking twice is harmless.
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    # Whatever the worker then stores, the job ends canceled.
    store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "too late"})
    final = client.get(f"/v1/jobs/{job['id']}").json
    assert final["status"] == "canceled" and final["result"] is None
