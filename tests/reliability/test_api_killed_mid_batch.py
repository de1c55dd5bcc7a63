"""The API process SIGKILLed at every step of a batch submit, and the client's retry with the same
``Idempotency-Key``: the one batch, complete, every line's job stored and run exactly once, and
one ``batch.completed`` webhook.

Before, a batch took no key (a retry was a second batch), and one whose API process died
between two chunks of its jobs never completed (its pending count never reached 0). Here a real
``internvl-queue api`` (gunicorn, ``INTERNVL_TEST_FAULTS=1``, 3 jobs per transaction so that a
batch of 10 spans four chunks) dies at each step through the test-fault hook, while the real
worker (tiny model) is busy with another batch; a real webhook worker delivers to a receiver.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import requests

from internvl_queue.api.fault_hook import BATCH_STEPS
from tests.api.api_process import ApiProcess
from tests.api.test_batch_run import IMAGES
from tests.conftest import WorkerProcess
from tests.receiver import Receiver, wait_until
from tests.webhooks.worker_process import NEW_SECRET, OLD_SECRET, WebhookWorker

pytestmark = pytest.mark.timeout(600)

LINES = 10


def _line(step: str, index: int) -> dict[str, Any]:
    return {
        "custom_id": f"{step}-{index}",
        "question": f"What is in picture {index}? ({step})",
        "images": [{"data": IMAGES[index % len(IMAGES)]}],
        "max_new_tokens": 4,
    }


def _body(step: str) -> bytes:
    return "\n".join(json.dumps(_line(step, i)) for i in range(LINES)).encode()


@pytest.fixture
def api(worker: WorkerProcess, start_api: Callable[..., ApiProcess]) -> ApiProcess:
    return start_api(
        WEBHOOK_SECRETS=f"{NEW_SECRET},{OLD_SECRET}",
        WEBHOOK_ALLOWED_CIDRS="127.0.0.0/8",
        INTERNVL_TEST_FAULTS="1",
        INTERNVL_TEST_BATCH_JOBS_PER_TRANSACTION="3",
    )


def _submit(api: ApiProcess, step: str, receiver: Receiver, **headers: str) -> requests.Response:
    return requests.post(
        f"{api.url}/v1/batches",
        params={"webhook_url": receiver.url},
        data=_body(step),
        headers={"Content-Type": "application/jsonl", "Idempotency-Key": step, **headers},
        timeout=60,
    )


def _retry_until_accepted(api: ApiProcess, step: str, receiver: Receiver) -> tuple[Any, int]:
    """The client's retries (through the restart of the API's worker process, and the 409s
    while the dead request's lease runs out); the 202, and how many 409s came before it."""
    deadline = time.monotonic() + 90
    conflicts = 0
    while time.monotonic() < deadline:
        try:
            reply = _submit(api, step, receiver)
        except requests.ConnectionError:
            time.sleep(0.1)
            continue
        if reply.status_code != 409:
            return reply, conflicts
        assert reply.json()["error"]["code"] == "batch_storing", reply.text
        conflicts += 1
        time.sleep(min(1.0, float(reply.headers["Retry-After"])))
    raise AssertionError(f"no 202 for the retry at {step}\n{api.log()}")


def _busy_batch(api: ApiProcess, n: int) -> str:
    """A batch without a key to keep the worker busy across the kill."""
    lines = [
        {**_line("busy", i), "custom_id": f"busy-{n}-{i}", "max_new_tokens": 48} for i in range(40)
    ]
    reply = requests.post(f"{api.url}/v1/batches", json=lines, timeout=60)
    assert reply.status_code == 202, reply.text
    return str(reply.json()["id"])


def _batch(api: ApiProcess, batch_id: str) -> dict[str, Any]:
    reply = requests.get(f"{api.url}/v1/batches/{batch_id}", timeout=10)
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()
    return found


def _job_records(client: redis.Redis, batch_id: str) -> dict[str, dict[bytes, bytes]]:
    keys = [k for k in client.scan_iter(match="iq:job:*", count=1000) if k.count(b":") == 2]
    records = {k.decode().rsplit(":", 1)[1]: client.hgetall(k) for k in keys}
    return {i: r for i, r in records.items() if r.get(b"batch_id") == batch_id.encode()}  # type: ignore[union-attr]


def test_a_retry_after_the_api_dies_mid_batch_gets_the_whole_batch_once(
    api: ApiProcess,
    receiver: Receiver,
    webhook_worker: WebhookWorker,
    redis_client: redis.Redis,
) -> None:
    rng = random.Random(7)
    faulted: dict[str, str] = {}  # step -> the batch its retry got
    busy: list[str] = []
    conflicts: dict[str, int] = {}
    for step in BATCH_STEPS:
        # The kill lands while the worker is busy (another batch if it finished the last one
        # before we looked: the tiny model is fast).
        for _ in range(5):
            busy.append(_busy_batch(api, len(busy)))
            time.sleep(rng.uniform(0, 0.5))
            if any(_batch(api, b)["status"] in ("queued", "running") for b in busy):
                break
        else:
            raise AssertionError(f"nothing in flight at the kill ({step})")
        with pytest.raises(requests.ConnectionError):
            _submit(api, step, receiver, **{"X-Test-Fault": f"kill-api-at={step}"})
        retry, conflicts[step] = _retry_until_accepted(api, step, receiver)
        assert retry.status_code == 202, retry.text
        # The record (and the key) are committed before every step: each retry is a replay.
        assert retry.headers.get("Idempotency-Replayed") == "true", (step, dict(retry.headers))
        faulted[step] = retry.json()["id"]
    log = api.log_path.read_text()
    assert log.count("test fault: killing API process") == len(BATCH_STEPS)
    # Killed storing, the retry stored what was left: all 10, or 7 after the first chunk's 3.
    # Killed after the last chunk, the retry stores none, or finds the batch completed already
    # (a reaper sent the 10 jobs' messages, 10 s after the submit, and they ran before the
    # lease let the retry take over): both are the whole batch.
    resumed = sorted(int(w.split()[0]) for w in log.split("resuming, ")[1:])
    assert resumed in ([7, 10], [0, 7, 10]), (resumed, log)
    # Jobs stored but not sent by the dead process get their message from a reaper (10 s).
    for batch_id in [*faulted.values(), *busy]:
        wait_until(
            lambda b=batch_id: _batch(api, b)["status"] == "completed", 180, "a batch", api.log()
        )
    for step, batch_id in faulted.items():
        batch = _batch(api, batch_id)
        assert batch["cut_short"] is False, step
        assert batch["counts"] == {
            "total": LINES,
            "invalid": 0,
            "jobs": LINES,
            "pending": 0,
            "succeeded": LINES,
            "failed": 0,
            "canceled": 0,
        }, step
        rows = [
            json.loads(r)
            for r in requests.get(
                f"{api.url}/v1/batches/{batch_id}/results", timeout=30
            ).text.splitlines()
        ]
        assert [r["custom_id"] for r in rows] == [f"{step}-{i}" for i in range(LINES)]
        assert {r["status"] for r in rows} == {"succeeded"}, step
        records = _job_records(redis_client, batch_id)
        # One job per line (no job stored twice, none lost), each run once.
        assert sorted(records) == sorted(r["job_id"] for r in rows), step
        assert {r[b"attempts"] for r in records.values()} == {b"1"}, step

    # One batch.completed per faulted batch (the busy ones have no webhook).
    def completed() -> list[str]:
        events = [json.loads(r.body) for r in list(receiver.received)]
        return [e["data"]["id"] for e in events if e["type"] == "batch.completed"]

    wait_until(lambda: set(completed()) >= set(faulted.values()), 60, "batch.completed")
    time.sleep(1.0)  # a duplicate would show by now
    got = completed()
    assert sorted(got) == sorted(faulted.values()), got
    print(
        f"\nAPI killed at {', '.join(BATCH_STEPS)}: each retry got its batch of {LINES}, every "
        f"line's job stored once and run once, one batch.completed each; 409 batch_storing "
        f"before the 202: {conflicts}"
    )
