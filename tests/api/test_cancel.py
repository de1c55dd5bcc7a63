"""POST /v1/jobs/<id>/cancel: queued jobs at once, running ones through their worker."""

from __future__ import annotations

import redis

from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from tests.api.lifecycle_helpers import json_body


def test_a_queued_job_is_canceled_at_once(client) -> None:  # type: ignore[no-untyped-def]
    job = client.post("/v1/jobs", json=json_body()).json
    reply = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert reply.status_code == 200, reply.json
    assert reply.json["status"] == "canceled"
    assert reply.json["error"]["code"] == "canceled"
    assert client.get(f"/v1/jobs/{job['id']}").json["status"] == "canceled"


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
