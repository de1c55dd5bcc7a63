"""A high job overtakes a backlog of low ones: a real API (the Flask app), a real Redis, and a real
``internvl-queue worker`` on the tiny model.

Deterministic: the low jobs, then the high one, are queued while no worker consumes the queue;
then a worker starts. Its wait is measured in jobs, not seconds: how many low jobs were answered
before it (their ``finished_at`` before its own). A worker serves a batch at a time, so the
promise is "within the next batch": at most the batch it could not join (one
``INTERNVL_MAX_BATCH_JOBS``) and its own batch's low companions.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from tests.conftest import WorkerProcess
from tests.images import photo

LOW_JOBS = 500
BATCH = 8  # the test worker's INTERNVL_MAX_BATCH_JOBS
IMAGE = base64.b64encode(photo(32, 32, seed=5)).decode()


def _submit(client: FlaskClient, priority: str, n: int = 1) -> list[str]:
    body = {"question": "What is it?", "images": [{"data": IMAGE}], "max_new_tokens": 4}
    ids = []
    for _ in range(n):
        reply = client.post("/v1/jobs", json={**body, "priority": priority})
        assert reply.status_code == 202, reply.json
        ids.append(reply.json["id"])
    return ids


def _finished(client: FlaskClient, job_id: str, timeout: float = 180) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}?wait=5").json
        if JobStatus(job["status"]).is_terminal:
            return job  # type: ignore[no-any-return]
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


@pytest.mark.timeout(400)
def test_a_high_job_queued_behind_500_low_ones_is_answered_within_the_next_batch(
    make_app: Callable[..., Flask], settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = replace(settings, queue_name="lanes-overtake", max_high_per_key=0)
    app = make_app(settings)
    client = app.test_client()
    store = app.extensions["internvl_queue"].store
    lows = _submit(client, "low", LOW_JOBS)
    [high] = _submit(client, "high")

    worker = WorkerProcess(settings, tmp_path / "worker.log", INTERNVL_MAX_BATCH_JOBS=str(BATCH))
    try:
        done = _finished(client, high)
        assert done["status"] == "succeeded", done
        high_job = store.get(high)
        low_jobs = [store.get(job_id) for job_id in lows]
        answered_before = sum(
            1
            for j in low_jobs
            if j.finished_at is not None and j.finished_at < high_job.finished_at
        )
        started_before = sum(
            1 for j in low_jobs if j.started_at is not None and j.started_at < high_job.started_at
        )
        print(
            f"high job: {answered_before} low job(s) answered before it, "
            f"{started_before} claimed by a task before it, batch of {done['result']['batch_size']}"
        )
        # FIFO would answer it last (about 500 before it).
        assert answered_before <= 2 * BATCH - 1, worker.log()
    finally:
        worker.stop()
