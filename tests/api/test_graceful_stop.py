"""``SIGTERM`` to a real ``internvl-queue api`` (a restart, an upgrade): it stops accepting at
once, answers every open long poll at once with the job as it is (``Retry-After: 1``: poll
again), finishes the requests in hand, and refuses new connections rather than resetting them.

Before, gunicorn waited its whole ``graceful_timeout`` (10 s) for the open long polls, then
dropped them: every waiting caller got an empty reply (``curl: (52)``)."""

from __future__ import annotations

import json
import signal
import socket
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

LONG_POLLS = 6
# gunicorn's graceful_timeout is 10 s: a reply this quick did not wait for it.
QUICK_S = 5.0


@pytest.fixture
def connections() -> Iterator[ExitStack]:
    with ExitStack() as closing:
        yield closing


@pytest.fixture
def api(redis_url: str, tmp_path: Path) -> Iterator[ApiProcess]:
    process = ApiProcess(
        redis_url,
        tmp_path / "api.log",
        # No worker consumes this queue: jobs stay queued unless a test claims them.
        INTERNVL_QUEUE="internvl-graceful-stop",
        options=("--threads", "4"),
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _connect(api: ApiProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", api.port), timeout=30)


def _request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in headers.items())]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + body


def _reply(connection: socket.socket) -> tuple[int, dict[str, str], dict[str, object]]:
    """The status, headers (lower-case names) and JSON body of a whole reply."""
    head, _, body = read_reply(connection).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), f"no reply, or not a whole one: {head!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert len(body) == int(headers["content-length"]), (head, body)
    return int(status_line.split(" ")[1]), headers, json.loads(body)


def _still_waiting(connection: socket.socket) -> bool:
    connection.setblocking(False)
    try:
        connection.recv(1)
    except BlockingIOError:
        return True
    finally:
        connection.setblocking(True)
    return False


def _wait_until_queued(redis_client: redis.Redis, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while len(queued := redis_client.zrange(queued_key(), 0, -1)) < count:
        assert time.monotonic() < deadline, f"{len(queued)} jobs queued, not {count}"
        time.sleep(0.05)
    return [job_id.decode() for job_id in queued]


@pytest.mark.parametrize("held_s", [0.0, 0.4, 1.5])
def test_sigterm_answers_open_long_polls_at_once_and_finishes_requests_in_hand(
    api: ApiProcess, redis_client: redis.Redis, connections: ExitStack, held_s: float
) -> None:
    def connect() -> socket.socket:
        return connections.enter_context(_connect(api))

    ids = [
        requests.post(f"{api.url}/v1/jobs", json=json_body(), timeout=30).json()["id"]
        for _ in range(LONG_POLLS)
    ]
    # One job is running when the API stops: its caller gets it as running, not as queued.
    store = JobStore(redis_client, retention_s=3600)
    assert store.claim(ids[0], max_attempts=3).job is not None
    polls = [connect() for _ in ids]
    for poll, job_id in zip(polls, ids, strict=True):
        poll.sendall(_request("GET", f"/v1/jobs/{job_id}?wait=30"))
    submit_waiting = connect()  # a submit that waits for its job (Prefer: wait)
    submit_waiting.sendall(
        _request("POST", "/v1/jobs", json.dumps(json_body()).encode(), Prefer="wait=30")
    )
    body = json.dumps(json_body()).encode()
    submit_in_flight = connect()  # a submit whose body is still on its way
    submit_in_flight.sendall(_request("POST", "/v1/jobs", body)[: -len(body) // 2])
    _wait_until_queued(redis_client, LONG_POLLS)  # the waiting submit's job exists
    time.sleep(held_s)
    if held_s:
        assert all(_still_waiting(c) for c in [*polls, submit_waiting, submit_in_flight])

    stopped_at = time.monotonic()
    api.process.send_signal(signal.SIGTERM)
    submit_in_flight.sendall(body[-len(body) // 2 :])

    for poll, job_id in zip(polls, ids, strict=True):
        status, headers, job = _reply(poll)
        assert status == 200 and job["id"] == job_id, (status, job)
        assert job["status"] == ("running" if job_id == ids[0] else "queued"), job
        assert headers["retry-after"] == "1" and headers["connection"] == "close", headers
    status, headers, job = _reply(submit_waiting)
    assert status == 202 and job["status"] == "queued", (status, job)
    assert headers["location"] == f"/v1/jobs/{job['id']}" and headers["retry-after"] == "1"
    assert "preference-applied" not in headers  # not waited for: poll again
    answered_s = time.monotonic() - stopped_at
    assert answered_s < QUICK_S, f"the long polls were answered {answered_s:.1f} s after SIGTERM"
    status, _, job = _reply(submit_in_flight)
    assert status == 202 and job["status"] == "queued", (status, job)
    assert len(_wait_until_queued(redis_client, LONG_POLLS + 1)) == LONG_POLLS + 1

    # A connection made after the stop is refused; one accepted before it is served whole.
    deadline = time.monotonic() + QUICK_S
    while True:
        try:
            late = _connect(api)
        except ConnectionRefusedError:
            break
        with late:
            late.sendall(_request("GET", "/healthz"))
            assert _reply(late)[0] == 200
        assert time.monotonic() < deadline, "the API still accepts connections after SIGTERM"
        time.sleep(0.05)
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            _connect(api)
    assert api.process.wait(QUICK_S * 2) == 0, api.log()


def test_a_job_that_finishes_while_the_api_stops_is_answered_as_finished(
    api: ApiProcess, redis_client: redis.Redis
) -> None:
    job_id = requests.post(f"{api.url}/v1/jobs", json=json_body(), timeout=30).json()["id"]
    store = JobStore(redis_client, retention_s=3600)
    claim = store.claim(job_id, max_attempts=3)
    assert claim.job is not None
    with _connect(api) as poll:
        poll.sendall(_request("GET", f"/v1/jobs/{job_id}?wait=30"))
        time.sleep(0.5)
        assert _still_waiting(poll)
        store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "done"})
        api.process.send_signal(signal.SIGTERM)
        status, _, job = _reply(poll)
    assert status == 200 and job["status"] == "succeeded", (status, job)
    assert api.process.wait(QUICK_S * 2) == 0, api.log()
