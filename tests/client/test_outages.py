"""The client through the API's own outages, with a real ``internvl-queue api`` (gunicorn): a
full queue (``503 queue_full``, ``Retry-After: 10``), and the API killed and started again on
the same port while ``wait`` long-polls (``SIGTERM``: the poll is answered at once; ``SIGKILL``:
the connection drops), the job finishing meanwhile on a real worker."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from internvl_queue.client import Client, Job, JobStatus, RetryPolicy, ServiceUnavailable
from internvl_queue.core.settings import Settings
from internvl_queue.core.store import JobStore
from internvl_queue.queue import create_celery, send_run_job
from tests.api.api_process import ApiProcess
from tests.conftest import WorkerProcess
from tests.images import photo
from tests.worker.reference import reference_answer

# A queue no worker consumes: jobs sent there stay queued until a test hands them on.
HOLD_QUEUE = "internvl-client-hold"


@pytest.fixture
def full_after_one(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[str]:
    """A real API that holds at most one queued job (no worker takes it)."""
    process = ApiProcess(
        redis_url, tmp_path / "api.log", INTERNVL_QUEUE=HOLD_QUEUE, INTERNVL_MAX_QUEUED_JOBS="1"
    )
    try:
        process.wait_ready()
        yield process.url
    finally:
        process.stop()


def test_a_full_queue_is_retried_after_the_apis_retry_after(full_after_one: str) -> None:
    other = Client(full_after_one, api_key="")
    first = other.submit(photo(32, 32, seed=1), "What is it?")
    # A client that will not wait 10 s is told at once, with the API's code and Retry-After.
    impatient = Client(full_after_one, api_key="", retry=RetryPolicy(max_retry_after_s=5))
    with impatient, pytest.raises(ServiceUnavailable) as refused:
        impatient.submit(photo(32, 32, seed=2), "What is it?")
    assert (refused.value.status, refused.value.code) == (503, "queue_full")
    assert refused.value.retry_after == 10
    # One that waits: its pause is the API's Retry-After, during which the queue makes room.
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        other.cancel(first.id)

    with other, Client(full_after_one, api_key="", sleep=pause) as patient:
        second = patient.submit(photo(32, 32, seed=2), "What is it?")
    assert pauses == [10.0]
    assert second.status is JobStatus.QUEUED and second.id != first.id


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: it holds no socket)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def _stop(api: ApiProcess, how: str) -> None:
    if how == "SIGTERM":  # a restart, an upgrade: long polls are answered at once
        api.process.send_signal(signal.SIGTERM)
    else:  # the master and its workers die at once: connections drop, nothing answered
        workers = _children(api.process.pid)
        for pid in [api.process.pid, *workers]:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in workers):
            assert time.monotonic() < deadline, "the API's workers outlived SIGKILL"
            time.sleep(0.05)
    api.process.wait(30)


def _status(store: JobStore, job_id: str) -> JobStatus | None:
    """The job's status in Redis, read without the API (which may be down)."""
    found = store.get(job_id)
    return None if found is None else found.status


def _poll_is_held(api: ApiProcess, job_id: str) -> bool:
    """Whether the API holds a long poll on the job now: with ``INTERNVL_MAX_WAITERS=1`` a
    second one is answered at once with ``Retry-After`` instead of being held.

    The probe holds the one place itself for 0.1 s when it is free, and the client's poll that
    came then is told to come back after 1 s: so the probes leave it 1.5 s between them."""
    reply = requests.get(f"{api.url}/v1/jobs/{job_id}", params={"wait": "0.1"}, timeout=10)
    if "Retry-After" in reply.headers:
        return True
    time.sleep(1.5)
    return False


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_wait_survives_an_api_restart_mid_poll(
    worker: WorkerProcess,
    settings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
    tiny_model_dir: Path,
    how: str,
) -> None:
    store = JobStore(redis_client, retention_s=3600)
    log = tmp_path / "api.log"
    api = ApiProcess(settings.redis_url, log, INTERNVL_QUEUE=HOLD_QUEUE, INTERNVL_MAX_WAITERS="1")
    celery = create_celery(settings)
    outcome: list[Job | BaseException] = []
    try:
        api.wait_ready()
        image = photo(64, 48, seed=31)
        client = Client(api.url, api_key="")
        job = client.submit(image, "What is in the picture?", max_new_tokens=6)

        def wait() -> None:
            try:
                outcome.append(client.wait(job.id, timeout=180))
            except BaseException as exc:
                outcome.append(exc)

        waiting = threading.Thread(target=wait, daemon=True)
        waiting.start()
        deadline = time.monotonic() + 30
        while not _poll_is_held(api, job.id):
            assert time.monotonic() < deadline and not outcome, outcome
        _stop(api, how)
        # While the API is down, the job is handed to the worker and finishes: its long poll's
        # wake-up goes to no one; only a poll after the restart can find it.
        send_run_job(celery, job.id, settings.queue_name)
        finished = time.monotonic() + 60
        while _status(store, job.id) is not JobStatus.SUCCEEDED:
            assert time.monotonic() < finished, f"the worker did not finish {job.id}"
            time.sleep(0.1)
        assert not outcome, outcome  # still waiting, through the outage
        api.restart().wait_ready()
        waiting.join(120)
        [done] = outcome
        assert isinstance(done, Job), repr(done)
        assert done.id == job.id and done.status is JobStatus.SUCCEEDED
        expected, _ = reference_answer(
            tiny_model_dir,
            [image],
            "What is in the picture?",
            max_new_tokens=6,
            max_tiles=settings.max_tiles,
        )
        assert done.result is not None and done.result.answer == expected
        client.close()
    finally:
        api.stop()
        celery.close()
