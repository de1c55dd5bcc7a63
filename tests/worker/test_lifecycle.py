"""The job lifecycle through a real worker process: waiting on submit, canceling a running job."""

from __future__ import annotations

import time
from typing import Any

import requests

from tests.conftest import WorkerProcess
from tests.images import photo


def _post(api: str, image: bytes, headers: dict[str, str] | None = None, **fields: Any):  # type: ignore[no-untyped-def]
    return requests.post(
        f"{api}/v1/jobs",
        data={"question": "What is in the picture?", **fields},
        files=[("image", ("a.jpg", image, "image/jpeg"))],
        headers=headers or {},
        timeout=90,
    )


def test_prefer_wait_answers_with_the_finished_job(live_api: str, worker: WorkerProcess) -> None:
    reply = _post(live_api, photo(64, 48, seed=5), {"Prefer": "wait=60"}, max_new_tokens="8")
    assert reply.status_code == 200, reply.text
    job = reply.json()
    assert job["status"] == "succeeded"
    assert job["result"]["usage"]["completion_tokens"] >= 1


def test_a_running_job_is_stopped_and_the_worker_carries_on(
    live_api: str, worker: WorkerProcess
) -> None:
    # The tiny model stops at its end token after a second or so; the cancel lands well before,
    # wherever the job is (preparing its input, waiting for a batch, decoding). Stopping between
    # decode steps is shown in test_engine.py and test_runtime.py.
    job = _post(live_api, photo(896, 672, seed=6), max_new_tokens="4096").json()
    deadline = time.monotonic() + 60
    while (state := requests.get(f"{live_api}/v1/jobs/{job['id']}", timeout=10).json())[
        "status"
    ] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert state["status"] == "running", state
    canceled = requests.post(f"{live_api}/v1/jobs/{job['id']}/cancel", timeout=10)
    assert canceled.status_code == 202, canceled.text
    final = requests.get(f"{live_api}/v1/jobs/{job['id']}?wait=60", timeout=90).json()
    assert final["status"] == "canceled", final
    assert final["result"] is None and final["error"]["code"] == "canceled"
    # The worker is fine: the next job is answered.
    after = _post(live_api, photo(64, 48, seed=7), {"Prefer": "wait=60"}, max_new_tokens="4")
    assert after.json()["status"] == "succeeded"
    assert worker.process.poll() is None
