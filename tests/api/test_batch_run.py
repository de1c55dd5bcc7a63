"""Batches end to end: a real API (gunicorn), Redis, a real worker on the tiny model, and a real
webhook worker delivering to a local receiver."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.api.api_process import ApiProcess
from tests.conftest import WorkerProcess
from tests.images import photo
from tests.receiver import Receiver, wait_until
from tests.webhooks.worker_process import NEW_SECRET, OLD_SECRET, WebhookWorker

pytestmark = pytest.mark.timeout(600)

# A handful of distinct tiny images, so that the lines do not all give the same answer.
IMAGES = [base64.b64encode(photo(32, 32, seed=seed)).decode() for seed in range(8)]


def _line(index: int) -> dict[str, Any]:
    return {
        "custom_id": f"item-{index}",
        "question": f"What is in picture {index % 5}?",
        "images": [{"data": IMAGES[index % len(IMAGES)]}],
        "max_new_tokens": 4,
    }


@pytest.fixture
def api(worker: WorkerProcess, start_api: Callable[..., ApiProcess]) -> ApiProcess:
    return start_api(
        WEBHOOK_SECRETS=f"{NEW_SECRET},{OLD_SECRET}", WEBHOOK_ALLOWED_CIDRS="127.0.0.0/8"
    )


def _batch(api: ApiProcess, batch_id: str) -> dict[str, Any]:
    reply = requests.get(f"{api.url}/v1/batches/{batch_id}", timeout=10)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _results(api: ApiProcess, batch_id: str) -> list[dict[str, Any]]:
    reply = requests.get(f"{api.url}/v1/batches/{batch_id}/results", timeout=60)
    assert reply.status_code == 200, reply.text
    return [json.loads(row) for row in reply.text.splitlines()]


def test_a_2000_line_batch_with_20_bad_lines(
    api: ApiProcess, receiver: Receiver, webhook_worker: WebhookWorker
) -> None:
    lines: list[str] = []
    bad = set(range(50, 2000, 100))  # 20 lines
    for index in range(2000):
        line = _line(index)
        if index in bad and index % 200 == 50:
            line["max_tiles"] = 0  # out of range
        elif index in bad:
            line["images"] = [{"data": base64.b64encode(b"not an image").decode()}]
        lines.append(json.dumps(line))
    started = time.monotonic()
    reply = requests.post(
        f"{api.url}/v1/batches",
        params={"webhook_url": receiver.url},
        data="\n".join(lines).encode(),
        headers={"Content-Type": "application/jsonl"},
        timeout=120,
    )
    assert reply.status_code == 202, reply.text
    batch = reply.json()
    submitted_s = time.monotonic() - started
    assert batch["counts"]["invalid"] == 20 and batch["counts"]["jobs"] == 1980
    assert {e["line"] for e in batch["errors"]} == {i + 1 for i in bad}

    # Partial results while it runs: finished lines carry their answer, the others none yet.
    def partly_done() -> bool:
        counts = _batch(api, batch["id"])["counts"]
        return counts["succeeded"] > 0 and counts["pending"] > 0

    wait_until(partly_done, 120, "some lines finished and some pending", api.log())
    partial = _results(api, batch["id"])
    assert len(partial) == 2000
    finished = [r for r in partial if r["status"] == "succeeded"]
    waiting = [r for r in partial if r["status"] in ("queued", "running")]
    assert finished and waiting
    assert all(r["result"]["answer"] is not None for r in finished)
    assert all(r["result"] is None for r in waiting)

    wait_until(
        lambda: _batch(api, batch["id"])["status"] == "completed", 400, "the batch", api.log()
    )
    run_s = time.monotonic() - started
    done = _batch(api, batch["id"])
    assert done["counts"]["succeeded"] == 1980 and done["counts"]["pending"] == 0
    assert done["finished_at"] is not None
    rows = _results(api, batch["id"])
    assert [r["custom_id"] for r in rows] == [f"item-{i}" for i in range(2000)]
    assert [r["status"] for r in rows].count("invalid") == 20
    session = requests.Session()
    for row in rows:
        if row["status"] == "invalid":
            continue
        job = session.get(f"{api.url}/v1/jobs/{row['job_id']}", timeout=10).json()
        assert job["status"] == row["status"] == "succeeded"
        assert job["result"] == row["result"]
        assert job["batch"] == {"id": batch["id"], "custom_id": row["custom_id"]}
    # batch.completed is delivered, once.
    wait_until(lambda: len(receiver.received) >= 1, 30, "batch.completed", webhook_worker.log())
    time.sleep(1.0)
    events = [json.loads(r.body) for r in receiver.received]
    assert [e["type"] for e in events] == ["batch.completed"]
    assert events[0]["data"]["counts"]["succeeded"] == 1980
    print(f"2000-line batch: accepted in {submitted_s:.1f} s, done in {run_s:.1f} s")


def test_a_canceled_batch_stops(api: ApiProcess) -> None:
    reply = requests.post(f"{api.url}/v1/batches", json=[_line(i) for i in range(600)], timeout=60)
    assert reply.status_code == 202, reply.text
    batch_id = reply.json()["id"]
    wait_until(
        lambda: _batch(api, batch_id)["counts"]["succeeded"] > 0, 120, "a first line", api.log()
    )
    reply = requests.post(f"{api.url}/v1/batches/{batch_id}/cancel", timeout=60)
    assert reply.status_code in (200, 202), reply.text
    asked = reply.json()["cancel_requested_at"]
    assert asked is not None and reply.json()["counts"]["canceled"] > 0
    wait_until(lambda: _batch(api, batch_id)["status"] == "canceled", 60, "canceled", api.log())
    time.sleep(1.0)  # a job started after the cancel would show by now
    done = _batch(api, batch_id)
    counts = done["counts"]
    assert counts["canceled"] > 0 and counts["pending"] == 0
    assert counts["succeeded"] + counts["failed"] + counts["canceled"] == 600
    session = requests.Session()
    late = []
    for row in _results(api, batch_id):
        job = session.get(f"{api.url}/v1/jobs/{row['job_id']}", timeout=10).json()
        if job["started_at"] is not None and job["started_at"] > asked:
            late.append(job["id"])
        if job["status"] == "canceled" and job["started_at"] is None:
            assert job["error"]["code"] == "canceled"
    # A worker that takes a job of a canceled batch cancels it instead of starting it.
    assert late == [], "jobs started after the batch was canceled"
