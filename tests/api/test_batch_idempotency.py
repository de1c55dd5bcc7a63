"""POST /v1/batches with an Idempotency-Key, and a batch whose storer died, on a real Redis (the
storer's death is written into the record here; tests/reliability/test_api_killed_mid_batch.py
kills a real API process mid-batch)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import redis
from flask.testing import FlaskClient

from internvl_queue.api.parsing import submission_from_object
from internvl_queue.core.batches import CUT_SHORT_AFTER_S, Batch, BatchStore
from internvl_queue.core.keys import batch_key
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from internvl_queue.core.submission import prepare_job
from tests.api.lifecycle_helpers import JPEG
from tests.api.test_batches import jsonl, line, results


def _submit(client: FlaskClient, body: bytes, key: str) -> Any:
    return client.post(
        "/v1/batches",
        data=body,
        content_type="application/jsonl",
        headers={"Idempotency-Key": key},
    )


def _job_records(client: redis.Redis, batch_id: str) -> list[bytes]:
    keys = [k for k in client.scan_iter(match="iq:job:*", count=1000) if k.count(b":") == 2]
    return [k for k in keys if client.hget(k, "batch_id") == batch_id.encode()]


def test_a_retry_with_the_same_key_gets_the_same_batch_and_stores_nothing_more(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = jsonl([line("a"), line("b"), "{not json", line("c")])
    first = _submit(client, body, "nightly-1")
    assert first.status_code == 202, first.json
    assert "Idempotency-Replayed" not in first.headers
    retry = _submit(client, body, "nightly-1")
    assert retry.status_code == 202, retry.json
    assert retry.headers["Idempotency-Replayed"] == "true"
    assert retry.headers["Location"] == f"/v1/batches/{first.json['id']}"
    assert retry.json["id"] == first.json["id"]
    assert retry.json["counts"] == first.json["counts"]
    assert len(_job_records(redis_client, first.json["id"])) == 3
    assert len(results(client, first.json["id"])) == 4
    # Without a key, or with another, the same body is another batch.
    other = _submit(client, body, "nightly-2")
    assert other.status_code == 202 and other.json["id"] != first.json["id"]


def test_the_same_key_with_another_body_is_refused_and_stores_nothing(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    first = _submit(client, jsonl([line("a"), line("b")]), "k")
    reply = _submit(client, jsonl([line("a"), line("b", max_new_tokens=3)]), "k")
    assert reply.status_code == 422, reply.json
    assert reply.json["error"]["code"] == "idempotency_key_reused"
    assert "new key" in reply.json["error"]["message"]
    # The options in the query string are part of the request.
    with_option = client.post(
        "/v1/batches?all_or_nothing=true",
        data=jsonl([line("a"), line("b")]),
        content_type="application/jsonl",
        headers={"Idempotency-Key": "k"},
    )
    assert with_option.status_code == 422
    assert with_option.json["error"]["code"] == "idempotency_key_reused"
    assert len(_job_records(redis_client, first.json["id"])) == 2
    assert len(list(redis_client.scan_iter(match="iq:batch:*:lines"))) == 1


def test_a_job_and_a_batch_may_use_the_same_key(client: FlaskClient) -> None:
    job = client.post(
        "/v1/jobs", json=line("x"), headers={"Idempotency-Key": "shared"}
    )  # the custom_id is ignored by /v1/jobs
    assert job.status_code == 202, job.json
    batch = _submit(client, jsonl([line("a")]), "shared")
    assert batch.status_code == 202, batch.json
    assert "Idempotency-Replayed" not in batch.headers
    again = client.post("/v1/jobs", json=line("x"), headers={"Idempotency-Key": "shared"})
    assert again.json["id"] == job.json["id"] and again.headers["Idempotency-Replayed"] == "true"


def test_a_bad_key_is_refused(client: FlaskClient) -> None:
    reply = _submit(client, jsonl([line("a")]), "with space")
    assert reply.status_code == 400
    assert reply.json["error"]["code"] == "invalid_idempotency_key"


def _half_stored(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings, *, lease_left_s: float
) -> tuple[str, list[str]]:
    """A batch of 5 submitted with key "half" whose storer 'died' after storing 2 jobs: the
    record as a dead storer leaves it (jobs 3 to 5 deleted, its lease as given)."""
    reply = _submit(client, jsonl([line(c) for c in "abcde"]), "half")
    assert reply.status_code == 202
    batch_id = reply.json["id"]
    ids = [row["job_id"] for row in results(client, batch_id)]
    store = JobStore(redis_client, retention_s=settings.job_retention_s)
    for job_id in ids[2:]:
        store.cancel(job_id)  # its message, if any, finds it canceled and runs nothing
        redis_client.delete(f"iq:job:{job_id}")
    redis_client.hset(
        batch_key(batch_id),
        mapping={
            "stored": "2",
            "pending": "5",
            "canceled": "0",
            "storer": "dead",
            "storing_until": json.dumps(time.time() + lease_left_s),
        },
    )
    return batch_id, ids


def test_a_half_stored_batch_nobody_retries_is_cut_short_and_completes(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    batch_id, ids = _half_stored(client, redis_client, settings, lease_left_s=-1)
    # Within CUT_SHORT_AFTER_S of the lease, only the retry may finish it: a read shows it
    # being stored.
    assert client.get(f"/v1/batches/{batch_id}").json["status"] == "validating"
    redis_client.hset(
        batch_key(batch_id), "storing_until", json.dumps(time.time() - CUT_SHORT_AFTER_S - 1)
    )
    batch = client.get(f"/v1/batches/{batch_id}").json
    assert batch["cut_short"] is True and batch["status"] == "queued"
    assert batch["counts"]["jobs"] == 2 and batch["counts"]["pending"] == 2
    assert batch["counts"]["total"] == 5
    rows = results(client, batch_id)
    assert [r["status"] for r in rows] == ["queued", "queued", *["not_stored"] * 3]
    assert {r["error"]["code"] for r in rows[2:]} == {"batch_cut_short"}
    store = JobStore(redis_client, retention_s=settings.job_retention_s)
    for job_id in ids[:2]:
        job = store.claim(job_id, max_attempts=3).job
        assert job is not None
        store.finish(job, JobStatus.SUCCEEDED, result={"answer": "yes"})
    done = client.get(f"/v1/batches/{batch_id}").json
    assert done["status"] == "completed" and done["counts"]["succeeded"] == 2
    # A retry now gets the batch as it is: it was cut short before anyone retried.
    retry = _submit(client, jsonl([line(c) for c in "abcde"]), "half")
    assert retry.status_code == 202 and retry.json["id"] == batch_id
    assert retry.json["cut_short"] is True


def test_a_retry_while_the_first_request_still_stores_is_told_to_wait(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    batch_id, _ = _half_stored(client, redis_client, settings, lease_left_s=60)
    retry = _submit(client, jsonl([line(c) for c in "abcde"]), "half")
    assert retry.status_code == 409, retry.json
    assert retry.json["error"]["code"] == "batch_storing"
    assert int(retry.headers["Retry-After"]) > 0
    assert client.get(f"/v1/batches/{batch_id}").json["status"] == "validating"
    assert len(_job_records(redis_client, batch_id)) == 2


def test_a_retry_after_the_storer_died_stores_the_missing_jobs_under_their_listed_ids(
    client: FlaskClient, redis_client: redis.Redis, settings: Settings
) -> None:
    batch_id, ids = _half_stored(client, redis_client, settings, lease_left_s=-1)
    retry = _submit(client, jsonl([line(c) for c in "abcde"]), "half")
    assert retry.status_code == 202, retry.json
    assert retry.headers["Idempotency-Replayed"] == "true"
    assert retry.json["id"] == batch_id and retry.json["cut_short"] is False
    assert retry.json["status"] == "queued" and retry.json["counts"]["jobs"] == 5
    rows = results(client, batch_id)
    assert [r["job_id"] for r in rows] == ids
    assert [r["status"] for r in rows] == ["queued"] * 5
    assert [r["custom_id"] for r in rows] == list("abcde")
    assert len(_job_records(redis_client, batch_id)) == 5
    stored = BatchStore(redis_client, retention_s=60, event_ttl_s=60).get(batch_id)
    assert stored is not None and stored.stored == 5 and stored.storing_until is None


def test_a_batch_whose_jobs_all_ran_before_its_storer_finished_storing_is_not_taken_over(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """Its messages may be sent (by a reaper) and its jobs run before its storer's last step."""
    jobs = JobStore(redis_client, retention_s=settings.job_retention_s)
    batches = BatchStore(redis_client, retention_s=60, event_ttl_s=60)
    job = prepare_job(submission_from_object(line("a"), what="line 1"), settings, owner="o")
    batch, fence = batches.create(Batch.new("o", total=1, jobs=1, errors=[]), [job.id], key=None)
    assert fence is not None
    jobs.create_many([(replace(job, batch_id=batch.id, custom_id="a"), [JPEG])], fence=fence)
    claimed = jobs.claim(job.id, max_attempts=3).job
    assert claimed is not None
    jobs.finish(claimed, JobStatus.SUCCEEDED, result={"answer": "yes"})
    finished = batches.finish_storing(fence, {})
    assert finished is not None and finished.status.value == "completed"
    assert finished.storing_until is None and finished.cut_short is False
