"""Waiting without polling: GET ?wait=N and Prefer: wait=N on submit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis
from flask import Flask

from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from tests.api.lifecycle_helpers import json_body


def _finish_after(redis_client: redis.Redis, job_id: str, delay: float) -> list[float]:
    """Finish the job from another thread after ``delay`` s, as a worker would; when it did."""
    store = JobStore(redis_client, retention_s=3600)
    finished: list[float] = []

    def run() -> None:
        claim = store.claim(job_id, max_attempts=3)
        assert claim.job is not None
        time.sleep(delay)
        store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "done"})
        finished.append(time.monotonic())

    threading.Thread(target=run, daemon=True).start()
    return finished


def test_a_long_poll_returns_as_soon_as_the_job_finishes(  # type: ignore[no-untyped-def]
    client, redis_client: redis.Redis
) -> None:
    job = client.post("/v1/jobs", json=json_body()).json
    finished = _finish_after(redis_client, job["id"], 0.5)
    reply = client.get(f"/v1/jobs/{job['id']}?wait=30")
    returned = time.monotonic()
    assert reply.status_code == 200
    assert reply.json["status"] == "succeeded"
    assert returned - finished[0] < 0.25  # the notification, not a timer


def test_a_long_poll_gives_the_current_state_after_its_wait(client) -> None:  # type: ignore[no-untyped-def]
    job = client.post("/v1/jobs", json=json_body()).json
    started = time.monotonic()
    reply = client.get(f"/v1/jobs/{job['id']}?wait=0.5")
    assert 0.45 < time.monotonic() - started < 3
    assert reply.status_code == 200
    assert reply.json["status"] == "queued"
    assert reply.json["queue_position"] == 1


def test_wait_outside_0_to_60_is_422(client) -> None:  # type: ignore[no-untyped-def]
    job = client.post("/v1/jobs", json=json_body()).json
    for bad in ("61", "-1", "soon"):
        reply = client.get(f"/v1/jobs/{job['id']}?wait={bad}")
        assert reply.status_code == 422, bad
        assert reply.json["error"]["code"] == "invalid_parameter"


class FinishingDispatcher:
    """Stands in for broker and worker: finishes each job it is handed 0.3 s later (the real
    worker does the same in tests/worker/test_lifecycle.py)."""

    def __init__(self, redis_client: redis.Redis) -> None:
        self.redis = redis_client
        self.finished: list[list[float]] = []

    def dispatch(self, job_id: str) -> None:
        self.finished.append(_finish_after(self.redis, job_id, 0.3))


def test_prefer_wait_returns_the_finished_job(
    make_app: Callable[..., Flask], redis_client: redis.Redis, settings: Settings
) -> None:
    dispatcher = FinishingDispatcher(redis_client)
    client = make_app(settings, dispatcher=dispatcher).test_client()
    reply = client.post("/v1/jobs", json=json_body(), headers={"Prefer": "wait=10"})
    returned = time.monotonic()
    assert reply.status_code == 200, reply.json
    assert reply.json["status"] == "succeeded"
    assert reply.headers["Preference-Applied"] == "wait=10"
    assert returned - dispatcher.finished[0][0] < 0.25


def test_prefer_wait_falls_back_to_202(client) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    reply = client.post("/v1/jobs", json=json_body(), headers={"Prefer": "wait=0.4"})
    assert 0.35 < time.monotonic() - started < 3
    assert reply.status_code == 202
    assert reply.json["status"] == "queued"
    assert reply.headers["Location"] == f"/v1/jobs/{reply.json['id']}"
    assert reply.headers["Preference-Applied"] == "wait=0.4"


@pytest.mark.parametrize(
    "prefer",
    [
        ["respond-async, wait=5"],
        ["wait=5, Respond-Async"],
        ["respond-async; foo=bar, wait=5"],
        ["wait=5", "respond-async"],  # two headers
    ],
)
def test_respond_async_answers_202_at_once_even_with_a_wait(
    make_app: Callable[..., Flask], redis_client: redis.Redis, settings: Settings, prefer: list[str]
) -> None:
    # A job that would finish within the wait: respond-async must not wait for it anyway.
    client = make_app(settings, dispatcher=FinishingDispatcher(redis_client)).test_client()
    reply = client.post("/v1/jobs", json=json_body(), headers=[("Prefer", p) for p in prefer])
    # Waiting would have answered 200 with the finished job (it finishes 0.3 s after dispatch).
    assert reply.status_code == 202, reply.json
    assert reply.json["status"] == "queued"
    assert reply.headers["Preference-Applied"] == "respond-async"
    assert reply.headers["Location"] == f"/v1/jobs/{reply.json['id']}"


def test_a_preference_merely_containing_respond_async_is_not_it(client) -> None:  # type: ignore[no-untyped-def]
    prefer = {"Prefer": "x-respond-async, wait=0.2"}
    reply = client.post("/v1/jobs", json=json_body(), headers=prefer)
    assert reply.headers["Preference-Applied"] == "wait=0.2"
