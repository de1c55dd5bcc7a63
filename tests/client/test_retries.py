"""Retries and typed errors against a real HTTP server at the outermost edge, scripted reply by
reply: what is retried, after how long, with which Idempotency-Key, and what is raised."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from internvl_queue.cli.redis_server import free_port
from internvl_queue.client import (
    ApiError,
    ApiUnreachable,
    Client,
    JobFailed,
    JobStatus,
    RateLimited,
    RetryPolicy,
    ServiceUnavailable,
    ValidationFailed,
)
from tests.client.scripted_api import DROP, Scripted, ScriptedApi, job_json, reply_json
from tests.images import photo

IMAGE = photo(32, 32, seed=1)
SUCCEEDED = job_json(
    "succeeded",
    result={
        "answer": "a cat",
        "model": "m",
        "usage": {"prompt_tokens": 70, "completion_tokens": 3, "image_tiles": 1},
        "batch_size": 1,
        "timings_ms": {"queued": 1.0, "preprocess": 2.0, "inference": 3.0, "total": 6.0},
    },
)


@contextmanager
def edge(script: list[Scripted], **options: Any) -> Iterator[tuple[ScriptedApi, Client]]:
    """The scripted API, and a client of it (``options``: the client's)."""
    with ScriptedApi(script) as api, Client(api.url, **options) as client:
        yield api, client


def error(status: int, code: str, **headers: str) -> Scripted:
    return reply_json(status, {"error": {"code": code, "message": f"{code} happened"}}, **headers)


def test_a_503_is_retried_after_its_retry_after_with_the_same_idempotency_key() -> None:
    script = [error(503, "queue_full", **{"Retry-After": "1"}), reply_json(202, job_json())]
    with ScriptedApi(script) as api, Client(api.url) as client:
        started = time.monotonic()
        job = client.submit([IMAGE], "What is it?")
        took = time.monotonic() - started
    assert job.status is JobStatus.QUEUED
    first, retry = api.received
    assert (first.method, first.path) == (retry.method, retry.path) == ("POST", "/v1/jobs")
    key = first.headers["idempotency-key"]
    assert key and retry.headers["idempotency-key"] == key
    assert took >= 1.0  # Retry-After was waited out (a lower bound only)


def test_429_and_503_wait_what_retry_after_says() -> None:
    pauses: list[float] = []
    script = [
        error(429, "rate_limited", **{"Retry-After": "7"}),
        error(503, "service_unavailable", **{"Retry-After": "2"}),
        reply_json(202, job_json()),
    ]
    with ScriptedApi(script) as api, Client(api.url, sleep=pauses.append) as client:
        client.submit([IMAGE], "What is it?", idempotency_key="mine-1")
    assert pauses == [7.0, 2.0]
    assert [r.headers["idempotency-key"] for r in api.received] == ["mine-1"] * 3


def test_a_retry_after_over_the_policys_limit_is_raised_at_once() -> None:
    pauses: list[float] = []
    script = [error(429, "rate_limited", **{"Retry-After": "3600"})]
    policy = RetryPolicy(max_retry_after_s=60)
    scripted = edge(script, retry=policy, sleep=pauses.append)
    with scripted as (api, client), pytest.raises(RateLimited) as raised:
        client.submit([IMAGE], "What is it?")
    assert (raised.value.status, raised.value.code) == (429, "rate_limited")
    assert raised.value.retry_after == 3600
    assert raised.value.message == "rate_limited happened"
    assert pauses == [] and len(api.received) == 1


def test_retries_are_bounded_and_back_off_without_retry_after() -> None:
    pauses: list[float] = []
    script = [error(503, "service_unavailable")] * 3
    policy = RetryPolicy(attempts=3, backoff_s=0.5)
    scripted = edge(script, retry=policy, sleep=pauses.append)
    with scripted as (api, client), pytest.raises(ServiceUnavailable):
        client.get("abc")
    assert len(api.received) == 3
    first, second = pauses
    assert 0.25 <= first <= 0.5 and 0.5 <= second <= 1.0  # exponential, jittered down


def test_a_dropped_connection_is_retried_with_the_same_key() -> None:
    pauses: list[float] = []
    with edge([DROP, reply_json(202, job_json())], sleep=pauses.append) as (api, client):
        job = client.submit(IMAGE, "What is it?")
    assert job.id == job_json()["id"] and len(pauses) == 1
    first, retry = api.received
    assert first.headers["idempotency-key"] == retry.headers["idempotency-key"]


def test_nothing_listening_is_api_unreachable_after_the_retries() -> None:
    pauses: list[float] = []
    url = f"http://127.0.0.1:{free_port()}"
    client = Client(url, retry=RetryPolicy(attempts=4), sleep=pauses.append)
    with client, pytest.raises(ApiUnreachable) as raised:
        client.submit([IMAGE], "What is it?")
    assert len(pauses) == 3 and not raised.value.timed_out
    assert str(raised.value).startswith(f"cannot reach the API at {url}")


def test_a_refusal_is_typed_and_not_retried() -> None:
    script = [error(422, "invalid_parameter")]
    with edge(script) as (api, client), pytest.raises(ValidationFailed) as raised:
        client.submit([IMAGE], "What is it?", max_tiles=99)
    assert (raised.value.status, raised.value.code) == (422, "invalid_parameter")
    assert len(api.received) == 1


def test_an_error_that_is_not_the_apis_json_is_still_an_api_error() -> None:
    script = [Scripted(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"})]
    with edge(script) as (_, client), pytest.raises(ApiError) as raised:
        client.get("abc")
    assert type(raised.value) is ApiError
    assert (raised.value.status, raised.value.code, raised.value.json_body) == (
        502,
        "http_error",
        False,
    )
    assert "Bad Gateway" in raised.value.message


def test_run_long_polls_and_raises_job_failed_with_the_jobs_code() -> None:
    failed = job_json("failed", error={"code": "timeout", "message": "the job passed its deadline"})
    script = [reply_json(202, job_json()), reply_json(200, failed)]
    with edge(script) as (api, client), pytest.raises(JobFailed) as raised:
        client.run([IMAGE], "What is it?")
    assert raised.value.code == "timeout"
    assert raised.value.job.status is JobStatus.FAILED
    poll = api.received[1]
    assert poll.method == "GET" and poll.path.startswith(f"/v1/jobs/{failed['id']}?wait=")


def test_a_long_poll_answered_early_is_polled_again_after_retry_after() -> None:
    pauses: list[float] = []
    script = [
        reply_json(202, job_json()),
        reply_json(200, job_json("running"), **{"Retry-After": "1"}),  # the API was stopping
        reply_json(200, SUCCEEDED),
    ]
    with ScriptedApi(script) as api, Client(api.url, sleep=pauses.append) as client:
        job = client.run([IMAGE], "What is it?")
    assert pauses == [1.0]
    assert job.result is not None and job.result.answer == "a cat"
    assert job.result.usage.completion_tokens == 3
    assert job.result.timings_ms["total"] == 6.0
    assert len(api.received) == 3


def test_a_cancel_retried_after_a_dropped_reply_returns_the_job_it_canceled() -> None:
    canceled = job_json("canceled", error={"code": "canceled", "message": "canceled"})
    script = [
        DROP,
        error(409, "job_already_finished"),
        reply_json(200, canceled),
    ]
    pauses: list[float] = []
    with ScriptedApi(script) as api, Client(api.url, sleep=pauses.append) as client:
        job = client.cancel(canceled["id"])
    assert job.status is JobStatus.CANCELED
    assert [(r.method, r.path) for r in api.received] == [
        ("POST", f"/v1/jobs/{canceled['id']}/cancel"),
        ("POST", f"/v1/jobs/{canceled['id']}/cancel"),
        ("GET", f"/v1/jobs/{canceled['id']}"),
    ]


BATCH = {
    "id": "b_1",
    "status": "queued",
    "counts": {
        "total": 1,
        "invalid": 0,
        "jobs": 1,
        "pending": 1,
        "succeeded": 0,
        "failed": 0,
        "canceled": 0,
    },
    "created_at": "2026-11-24T14:00:00.123Z",
    "errors": [],
}
LINE = {"custom_id": "c1", "question": "What is it?", "images": [IMAGE]}


def test_a_batch_submit_is_retried_on_503() -> None:
    script = [error(503, "queue_full", **{"Retry-After": "0"}), reply_json(202, BATCH)]
    with edge(script) as (api, client):
        batch = client.submit_batch([LINE])
    assert batch.id == "b_1"
    assert batch.counts.pending == 1
    assert [r.path for r in api.received] == ["/v1/batches", "/v1/batches"]
    sent = json.loads(api.received[0].body)
    assert sent["all_or_nothing"] is False
    assert sent["requests"] == [{**LINE, "images": [{"data": base64.b64encode(IMAGE).decode()}]}]


def test_a_batch_is_retried_after_a_dropped_connection_and_while_the_api_stores_it() -> None:
    # The key makes a second send safe: the API answers the batch the first one made, or finishes
    # storing it (tests/reliability/test_api_killed_mid_batch.py).
    script = [
        DROP,
        error(409, "batch_storing", **{"Retry-After": "3"}),
        reply_json(202, BATCH, **{"Idempotency-Replayed": "true"}),
    ]
    pauses: list[float] = []
    with edge(script, sleep=pauses.append) as (api, client):
        got = client.submit_batch([LINE])
    assert got.id == "b_1"
    assert len(pauses) == 2 and pauses[1] == 3
    keys = {received.headers["idempotency-key"] for received in api.received}
    bodies = {received.body for received in api.received}
    assert len(api.received) == 3 and len(keys) == 1 and len(bodies) == 1


def test_another_conflict_of_a_batch_is_not_retried() -> None:
    with edge([error(409, "batch_already_finished")]) as (api, client), pytest.raises(ApiError):
        client.submit_batch([LINE])
    assert len(api.received) == 1
