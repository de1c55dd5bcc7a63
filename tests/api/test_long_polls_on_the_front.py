"""Long polls under a real ``internvl-queue api`` (gunicorn's asyncio worker + the front): they
hold no thread, so 500 of them wait on 4 threads while submits and ``/readyz`` answer at once
(the latency under 500 is measured by ``benchmarks/long_polls.py``); a caller that disconnects
gives its place back."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
import requests

from internvl_queue.core.keys import queued_key
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from tests.api.api_process import ApiProcess
from tests.api.lifecycle_helpers import json_body
from tests.api.raw_http import read_reply

THREADS = 4  # the API's threads (one process): far fewer than the long polls below
LONG_POLLS = 500
MAX_WAITERS = 600


@pytest.fixture
def api(redis_url: str, tmp_path: Path) -> Iterator[ApiProcess]:
    process = ApiProcess(
        redis_url,
        tmp_path / "api.log",
        # No worker consumes this queue: jobs stay queued until a test finishes them.
        INTERNVL_QUEUE="internvl-front-long-polls",
        options=("--threads", str(THREADS)),
        INTERNVL_MAX_WAITERS=str(MAX_WAITERS),
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _submit(api: ApiProcess, **headers: str) -> requests.Response:
    return requests.post(f"{api.url}/v1/jobs", json=json_body(), headers=headers, timeout=30)


def _open_long_poll(api: ApiProcess, job_id: str, wait_s: float) -> socket.socket:
    """A long poll on a socket of its own: hundreds of them need no thread in this test."""
    connection = socket.create_connection(("127.0.0.1", api.port), timeout=30)
    connection.sendall(
        f"GET /v1/jobs/{job_id}?wait={wait_s:g} HTTP/1.1\r\nHost: x\r\n\r\n".encode("ascii")
    )
    return connection


def _finish(redis_client: redis.Redis, job_id: str) -> None:
    """What a worker does: claim the job, store its answer (which wakes the long polls)."""
    store = JobStore(redis_client, retention_s=3600)
    claim = store.claim(job_id, max_attempts=3)
    assert claim.job is not None
    store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "done"})


def test_500_long_polls_on_4_threads_leave_submits_and_readyz_free(
    api: ApiProcess, redis_client: redis.Redis
) -> None:
    ids = [_submit(api).json()["id"] for _ in range(LONG_POLLS)]
    with ExitStack() as closing:
        polls = [closing.enter_context(_open_long_poll(api, job_id, 30)) for job_id in ids]
        time.sleep(1.5)
        # 500 waiting callers, 4 threads: under a thread per long poll these would hang for 30 s.
        timings = []
        for _ in range(5):
            started = time.monotonic()
            assert requests.get(f"{api.url}/readyz", timeout=5).status_code == 503  # no worker
            assert _submit(api).status_code == 202
            timings.append(time.monotonic() - started)
        assert max(timings) < 2.0, timings
        for poll in polls:
            poll.setblocking(False)
            with pytest.raises(BlockingIOError):  # still waiting: nothing sent yet
                poll.recv(1)
            poll.setblocking(True)

        finished_at = time.monotonic()
        for job_id in ids:
            _finish(redis_client, job_id)
        for poll in polls:
            head, _, body = read_reply(poll).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b"retry-after" not in head.lower()  # waited for, not bounced
            assert json.loads(body)["status"] == "succeeded"
        slowest = time.monotonic() - finished_at
    print(
        f"\n{LONG_POLLS} long polls on {THREADS} threads; readyz + submit max "
        f"{max(timings) * 1000:.0f} ms meanwhile; all {LONG_POLLS} answered "
        f"{slowest:.2f} s after the finishes began"
    )


def test_prefer_wait_on_a_submit_answers_200_once_the_job_finished(
    api: ApiProcess, redis_client: redis.Redis
) -> None:
    replies: list[requests.Response] = []
    waiter = threading.Thread(target=lambda: replies.append(_submit(api, Prefer="wait=20")))
    waiter.start()
    deadline = time.monotonic() + 10
    while not (queued := redis_client.zrange(queued_key(), 0, -1)):
        assert time.monotonic() < deadline, "the job was never stored"
        time.sleep(0.05)
    time.sleep(0.5)
    assert not replies  # still waiting for it
    _finish(redis_client, queued[0].decode())
    waiter.join(10)
    reply = replies[0]
    assert reply.status_code == 200 and reply.json()["status"] == "succeeded"
    assert reply.headers["Preference-Applied"] == "wait=20"
    assert reply.headers["Location"] == f"/v1/jobs/{queued[0].decode()}"
    assert reply.headers["Content-Type"] == "application/json"


def test_a_caller_that_disconnects_gives_its_place_back(api: ApiProcess) -> None:
    job_id = _submit(api).json()["id"]
    connections = [_open_long_poll(api, job_id, 60) for _ in range(MAX_WAITERS)]
    time.sleep(1.0)
    # Every place is taken: one more long poll is answered at once, with Retry-After.
    started = time.monotonic()
    bounced = requests.get(f"{api.url}/v1/jobs/{job_id}?wait=5", timeout=10)
    assert time.monotonic() - started < 2
    assert bounced.status_code == 200 and bounced.headers["Retry-After"] == "1"
    for connection in connections:
        connection.close()
    time.sleep(1.0)
    # Their waits ended with them: a new long poll is held for its whole wait again.
    started = time.monotonic()
    held = requests.get(f"{api.url}/v1/jobs/{job_id}?wait=1.5", timeout=10)
    assert "Retry-After" not in held.headers
    assert held.json()["status"] == "queued" and time.monotonic() - started >= 1.4
