"""Waiting without polling: GET ?wait=N and Prefer: wait=N on submit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import requests
from flask import Flask

from internvl_queue.cli.redis_server import free_port
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from tests.api.lifecycle_helpers import json_body
from tests.conftest import worker_env
from tests.processes import CommandProcess
from tests.receiver import wait_until

_finishers: list[threading.Thread] = []


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A queue of these tests' own: jobs must stay queued until a test finishes them, even
    while the session's shared worker runs (it consumes the default queue)."""
    return replace(settings, queue_name="internvl-waiting-tests")


@pytest.fixture(autouse=True)
def _finishers_done(redis_client: redis.Redis) -> Iterator[None]:
    """Each test's finishing threads end before its Redis client closes."""
    yield
    while _finishers:
        _finishers.pop().join(10)


def _finish_after(redis_client: redis.Redis, job_id: str, delay: float) -> list[float]:
    """Finish the job from another thread after ``delay`` s, as a worker would; when it did
    (taken just before the transaction that stores and announces it)."""
    store = JobStore(redis_client, retention_s=3600)
    finished: list[float] = []

    def run() -> None:
        claim = store.claim(job_id, max_attempts=3)
        assert claim.job is not None
        time.sleep(delay)
        finished.append(time.monotonic())
        store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "done"})

    _finishers.append(threading.Thread(target=run, daemon=True))
    _finishers[-1].start()
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

    def dispatch(self, job_id: str, priority: object = None) -> None:
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


def test_long_polls_past_the_cap_are_answered_at_once_and_share_one_listener(
    settings: Settings, make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    """A process holds at most INTERNVL_MAX_WAITERS long polls; one more gets the job as it is
    at once (with Retry-After), so waiting callers never take every thread. The held ones share
    one pub/sub subscription and still return as soon as the job finishes."""
    from internvl_queue.api.waiting import WAITERS_EXTENSION

    patterns_before = redis_client.pubsub_numpat()
    app = make_app(replace(settings, max_waiters=2))
    client = app.test_client()
    job_id = client.post("/v1/jobs", json=json_body()).json["id"]
    held: list[tuple[float, object]] = []

    def long_poll() -> None:
        reply = client.get(f"/v1/jobs/{job_id}?wait=30")
        held.append((time.monotonic(), reply))

    pollers = [threading.Thread(target=long_poll) for _ in range(2)]
    for poller in pollers:
        poller.start()
    deadline = time.monotonic() + 10
    while not (
        app.extensions.get(WAITERS_EXTENSION) and app.extensions[WAITERS_EXTENSION].waiting == 2
    ):
        assert time.monotonic() < deadline, "the two long polls never started waiting"
        time.sleep(0.02)
    # One listener for the process, not one per waiting request.
    assert redis_client.pubsub_numpat() == patterns_before + 1

    for refused in (
        client.get(f"/v1/jobs/{job_id}?wait=30"),
        client.post("/v1/jobs", json=json_body(), headers={"Prefer": "wait=30"}),
    ):
        assert refused.headers["Retry-After"] == "1"
        assert "Preference-Applied" not in refused.headers
        assert refused.json["status"] == "queued"
    started = time.monotonic()
    assert client.get(f"/v1/jobs/{job_id}?wait=0.2").json["status"] == "queued"
    assert time.monotonic() - started < 0.15  # still full: answered at once, not waited

    finished = _finish_after(redis_client, job_id, 0.3)
    for poller in pollers:
        poller.join(10)
    assert len(held) == 2
    for returned, reply in held:
        assert reply.status_code == 200 and reply.json["status"] == "succeeded"  # type: ignore[attr-defined]
        assert "Retry-After" not in reply.headers  # type: ignore[attr-defined]
        assert returned - finished[0] < 0.25
    # Free again: a long poll waits (and returns at once, the job being finished).
    assert "Retry-After" not in client.get(f"/v1/jobs/{job_id}?wait=5").headers


def test_many_long_polls_do_not_starve_a_real_api(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """`internvl-queue api` (gunicorn, 2 x 8 threads) with 60 callers in `?wait=20` long polls:
    submits and /readyz still answer at once (before the cap, 16 waiting callers held every
    thread for their whole wait), and every caller sees its job finish. The full-size figure (500
    callers, p99) is benchmarks/long_polls.py's."""
    port = free_port()
    env = {**worker_env(settings), "INTERNVL_QUEUE": settings.queue_name, "LOG_LEVEL": "WARNING"}
    api = CommandProcess(["api", "--port", str(port)], env, tmp_path / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{base}/healthz"), 30, "the API", api.log())
        ids = [
            requests.post(f"{base}/v1/jobs", json=json_body(), timeout=10).json()["id"]
            for _ in range(60)
        ]
        outcomes: dict[str, str] = {}

        def caller(job_id: str) -> None:
            with requests.Session() as session:
                while job_id not in outcomes:
                    reply = session.get(f"{base}/v1/jobs/{job_id}?wait=20", timeout=40)
                    if reply.json()["status"] == "succeeded":
                        outcomes[job_id] = "succeeded"
                    elif "Retry-After" in reply.headers:
                        time.sleep(float(reply.headers["Retry-After"]))

        callers = [threading.Thread(target=caller, args=(i,), daemon=True) for i in ids]
        for thread in callers:
            thread.start()
        time.sleep(1.0)  # every caller is in a long poll, held or answered
        slowest = 0.0
        for _ in range(10):
            for request in (
                lambda: requests.post(f"{base}/v1/jobs", json=json_body(), timeout=10),
                lambda: requests.get(f"{base}/readyz", timeout=10),
            ):
                started = time.monotonic()
                assert request().status_code in (200, 202, 503)  # /readyz: 200 if a worker runs
                slowest = max(slowest, time.monotonic() - started)
        assert slowest < 1.0, slowest
        store = JobStore(redis_client, retention_s=3600)
        for job_id in ids:
            claim = store.claim(job_id, max_attempts=3)
            assert claim.job is not None
            store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "done"})
        for thread in callers:
            thread.join(30)
        assert len(outcomes) == 60
    finally:
        api.terminate(20)
        api.close()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
