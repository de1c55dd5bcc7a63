"""The API process SIGKILLed at every step of a submit, and the client's retry with the same
``Idempotency-Key``: exactly one job, which runs once, and one terminal webhook for it.

Issue 20: the key was reserved for 60 s, and bound to the job only after it was dispatched; a
kill in between cost the client 60 s of ``409``, and then its retry created a second job while a
reaper ran the first. Here a real ``internvl-queue api`` (gunicorn, ``INTERNVL_TEST_FAULTS=1``)
dies at each step through the test-fault hook (``X-Test-Fault: kill-api-at=<step>``), with a real
GPU worker busy on other jobs, a real webhook worker and a local receiver.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from internvl_queue.api.fault_hook import STEPS
from internvl_queue.core.keys import dispatching_key
from tests.api.api_process import ApiProcess
from tests.images import photo
from tests.receiver import Receiver
from tests.reliability.harness import Stack, running_stack, wait_for

ROUNDS = 2  # each step twice, at different moments of the work in flight
IMAGE = photo(64, 48, seed=7)


def _submit(api: ApiProcess, question: str, key: str, hooks: Receiver, **headers: str):  # type: ignore[no-untyped-def]
    return requests.post(
        f"{api.url}/v1/jobs",
        data={"question": question, "webhook_url": hooks.url, "max_new_tokens": "8"},
        files=[("image", ("a.jpg", IMAGE, "image/jpeg"))],
        headers={"Idempotency-Key": key, **headers},
        timeout=30,
    )


def _retry_until_answered(api: ApiProcess, question: str, key: str, hooks: Receiver):  # type: ignore[no-untyped-def]
    """The client's retries, as soon as the API takes connections again (gunicorn's master
    starts a new worker process); the first answer."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return _submit(api, question, key, hooks)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer to the retry\n{api.log()}") from None
            time.sleep(0.1)


def _volley(api: ApiProcess, hooks: Receiver, count: int) -> list[str]:
    """``count`` other jobs submitted at once (no key); their ids."""

    def submit(n: int) -> str:
        reply = requests.post(
            f"{api.url}/v1/jobs",
            data={
                "question": f"Describe it ({n}).",
                "webhook_url": hooks.url,
                "max_new_tokens": "64",
            },
            files=[("image", ("a.jpg", photo(64, 48, seed=n % 50), "image/jpeg"))],
            timeout=30,
        )
        assert reply.status_code == 202, reply.text
        return str(reply.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(submit, range(count)))


def _jobs_asking(client: redis.Redis, question: str) -> list[str]:
    """The id of every stored job record with this question (not images or deliveries)."""
    records = [k for k in client.scan_iter(match="iq:job:*", count=1000) if k.count(b":") == 2]
    pipe = client.pipeline(transaction=False)
    for key in records:
        pipe.hget(key, "question")
    return [
        key.decode().rsplit(":", 1)[1]
        for key, asked in zip(records, pipe.execute(), strict=True)
        if asked == question.encode()
    ]


def _broker_quiet(stack: Stack) -> bool:
    client = stack.client
    return (
        client.zcard(dispatching_key()) == 0
        and client.llen(stack.settings.queue_name) == 0
        and client.hlen("unacked") == 0
    )


def _terminal_events(hooks: Receiver) -> dict[str, set[str]]:
    """job id -> the webhook-ids of its terminal events (a re-send keeps its webhook-id)."""
    found: dict[str, set[str]] = {}
    for received in list(hooks.received):
        event = json.loads(received.body)
        if event["type"] in ("job.succeeded", "job.failed", "job.canceled"):
            found.setdefault(event["data"]["id"], set()).add(received.headers["webhook-id"])
    return found


@pytest.fixture
def stack(tmp_path: Path, tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    # The harness's in-process API is not used: it could not be killed without the test.
    with running_stack(tmp_path, str(tiny_model_dir)) as stack:
        yield stack


def test_a_retry_after_the_api_dies_at_any_step_of_a_submit_finds_the_only_job(
    stack: Stack, tmp_path: Path
) -> None:
    rng = random.Random(20)
    hooks = Receiver().start()
    api = ApiProcess(stack.settings.redis_url, tmp_path / "api.log", **stack.env)
    try:
        worker = stack.start_worker()
        webhooks = stack.start_webhook_worker()
        api.wait_ready()
        worker.wait_ready()
        webhooks.wait_ready()
        others: list[str] = []
        faulted: dict[str, str] = {}  # job id -> the step its first request died at
        answered_after: list[float] = []  # seconds from a kill to the answer to its retry
        for round_ in range(ROUNDS):
            for step in STEPS:
                # The kill lands while the worker is busy: a volley of other jobs just before it.
                # (another volley if the worker finished the last one before we looked).
                for _ in range(5):
                    in_flight = _volley(api, hooks, rng.randint(8, 16))
                    others += in_flight
                    time.sleep(rng.uniform(0, 0.3))
                    if stack.unfinished(in_flight):
                        break
                else:
                    raise AssertionError(f"nothing in flight at the kill ({step})")
                question = f"What is in the picture? (API killed at {step}, round {round_})"
                key = f"kill-{step}-{round_}"
                with pytest.raises(requests.ConnectionError):
                    _submit(api, question, key, hooks, **{"X-Test-Fault": f"kill-api-at={step}"})
                killed_at = time.monotonic()
                retry = _retry_until_answered(api, question, key, hooks)
                answered_after.append(time.monotonic() - killed_at)
                assert retry.status_code == 202, retry.text
                # Killed before the store, the retry made the job; after, it found it.
                replayed = retry.headers.get("Idempotency-Replayed") == "true"
                assert replayed is (step != "before-store"), (step, dict(retry.headers))
                assert _jobs_asking(stack.client, question) == [retry.json()["id"]], step
                faulted[retry.json()["id"]] = step
        kills = api.log_path.read_text().count("test fault: killing API process")
        assert kills == ROUNDS * len(STEPS)
        everything = [*others, *faulted]
        # A job stored before its message was sent gets it from a reaper (10 s after its submit).
        wait_for(lambda: not stack.unfinished(everything), 90, "every job to finish")
        jobs = stack.jobs(everything)
        unsuccessful = {i: j["error"] for i, j in jobs.items() if j["status"] != "succeeded"}
        assert unsuccessful == {}
        for job_id, step in faulted.items():
            assert _jobs_asking(stack.client, jobs[job_id]["question"]) == [job_id], step
            assert jobs[job_id]["attempts"] == "1", (step, jobs[job_id])  # it ran once
        # Every message sent (none owed, none waiting, none held): a duplicate one would have
        # been handled by now, and found its job finished.
        wait_for(lambda: _broker_quiet(stack), 60, "no message owed, waiting or held")
        wait_for(
            lambda: set(everything) <= set(_terminal_events(hooks)), 60, "every terminal webhook"
        )
        events = _terminal_events(hooks)
        assert set(events) == set(everything)
        twice = {job_id: ids for job_id, ids in events.items() if len(ids) != 1}
        assert twice == {}, f"more than one terminal event: {twice}"
        late = [
            float(jobs[i]["started_at"]) - float(jobs[i]["created_at"])
            for i, step in faulted.items()
            if step == "after-store"
        ]
        print(
            f"\nAPI killed {len(faulted)} times ({ROUNDS} at each of {', '.join(STEPS)}), "
            f"{len(others)} other jobs around them: one job per killed submit, each ran once, one "
            f"terminal webhook each; retry answered {min(answered_after):.1f} to "
            f"{max(answered_after):.1f} s after the kill; killed after-store, started "
            f"{min(late):.1f} to {max(late):.1f} s after its submit (a reaper sent its message)"
        )
    finally:
        api.stop()
        hooks.stop()
