"""Webhook delivery end to end: a real webhook worker process, real Redis, a real HTTP receiver.

Events are produced the way the GPU worker produces them (the store's claim and finish), so no
model is needed. Each test starts its own ``internvl-queue webhook-worker`` (under a second):
every worker polls the one outbox, so two tests' workers must never overlap.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import redis
import requests as http
from flask import Flask
from werkzeug.serving import make_server

from internvl_queue import verify_webhook
from internvl_queue.cli.redis_server import free_port
from internvl_queue.core.apikeys import ApiKeyStore
from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.outbox import Outbox
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from internvl_queue.core.webhook_events import DEFAULT_EVENTS, EVENT_TYPES
from tests.conftest import WorkerProcess
from tests.images import photo
from tests.receiver import Received, Receiver, Reply
from tests.webhooks.worker_process import (
    LEASE_S,
    NEW_SECRET,
    OLD_SECRET,
    WebhookWorker,
    wait_until,
)

PARAMS = JobParams(max_new_tokens=8, max_tiles=2)


def finished_job(
    store: JobStore,
    url: str,
    events: tuple[str, ...] = DEFAULT_EVENTS,
    status: JobStatus = JobStatus.SUCCEEDED,
) -> Job:
    job = Job.new("what?", PARAMS, image_count=1, webhook_url=url, webhook_events=events)
    store.create(job, [b"img"])
    claim = store.claim(job.id, max_attempts=3)
    assert claim.job is not None
    result = {"answer": "a cat"} if status is JobStatus.SUCCEEDED else None
    error = None if result else {"code": "model_error", "message": "boom"}
    done = store.finish(claim.job, status, result=result, error=error)
    assert done is not None
    return done


def final_log(outbox: Outbox, job_id: str, timeout: float = 15) -> list[dict[str, Any]]:
    """The job's delivery log once its last entry is final (not retrying)."""
    wait_until(
        lambda: bool(log := outbox.deliveries(job_id)) and log[-1]["outcome"] != "retrying",
        timeout,
        "a final delivery outcome",
    )
    return outbox.deliveries(job_id)


def verified(request: Received, secret: str) -> dict[str, Any]:
    return verify_webhook(request.headers, request.body, secret)


# -- the tests ----------------------------------------------------------------------------------
def test_a_finished_job_is_delivered_signed(
    store: JobStore, outbox: Outbox, receiver: Receiver, start_worker: Callable[..., WebhookWorker]
) -> None:
    worker = start_worker().wait_ready()
    job = finished_job(store, receiver.url)
    stored = store.get(job.id)
    (request,) = receiver.wait_for(1)
    # Both active secrets sign: a receiver holding either the old or the new one verifies.
    payload = verified(request, OLD_SECRET)
    assert payload == verified(request, NEW_SECRET)
    assert len(request.headers["webhook-signature"].split()) == 2
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job.id and payload["data"]["status"] == "succeeded"
    assert request.path == "/hooks?source=test"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("internvl-queue/")
    assert request.headers["webhook-id"].startswith("msg_")
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 10
    (entry,) = final_log(outbox, job.id)
    assert entry["outcome"] == "delivered" and entry["status_code"] == 204
    assert entry["event_id"] == request.headers["webhook-id"] and entry["url"] == receiver.url
    # A delivery leaves the job alone.
    assert store.get(job.id) == stored
    # A warm shutdown (the pump stopped by the shutdown hook) exits cleanly.
    assert worker.stop() == 0, worker.log()


def test_failing_receiver_gets_the_event_later_with_the_same_id(
    store: JobStore, outbox: Outbox, start_worker: Callable[..., WebhookWorker]
) -> None:
    receiver = Receiver(script=[Reply(500), Reply(500), Reply(503)]).start()
    try:
        start_worker().wait_ready()
        job = finished_job(store, receiver.url)
        log = final_log(outbox, job.id)
        requests = receiver.wait_for(4)
    finally:
        receiver.stop()
    assert len(requests) == 4
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    for request in requests:
        verified(request, NEW_SECRET)
    assert [(e["attempt"], e["status_code"], e["outcome"]) for e in log] == [
        (1, 500, "retrying"),
        (2, 500, "retrying"),
        (3, 503, "retrying"),
        (4, 204, "delivered"),
    ]
    assert {e["event_id"] for e in log} == {requests[0].headers["webhook-id"]}


def test_a_receiver_that_is_down_gets_the_event_when_it_comes_back(
    store: JobStore, outbox: Outbox, start_worker: Callable[..., WebhookWorker]
) -> None:
    receiver = Receiver()  # not listening yet: connections are refused
    start_worker().wait_ready()
    job = finished_job(store, receiver.url)
    wait_until(lambda: len(outbox.deliveries(job.id)) >= 2, 10, "two refused connections")
    receiver.start()
    try:
        log = final_log(outbox, job.id)
        (request,) = receiver.wait_for(1)
    finally:
        receiver.stop()
    assert (
        log[-1]["outcome"] == "delivered" and log[-1]["event_id"] == request.headers["webhook-id"]
    )
    failures = log[:-1]
    assert len(failures) >= 2
    assert all(e["status_code"] is None and "refused" in e["error"] for e in failures)


def test_a_receiver_down_for_good_is_given_up(
    store: JobStore, outbox: Outbox, start_worker: Callable[..., WebhookWorker]
) -> None:
    start_worker().wait_ready()
    job = finished_job(store, Receiver().url)
    log = final_log(outbox, job.id)
    assert [e["outcome"] for e in log] == ["retrying"] * 5 + ["gave_up"]
    assert log[-1]["next_attempt_at"] is None


def test_410_stops_retrying(
    store: JobStore, outbox: Outbox, start_worker: Callable[..., WebhookWorker]
) -> None:
    receiver = Receiver(script=[Reply(410)] + [Reply(500)] * 5).start()
    try:
        start_worker().wait_ready()
        job = finished_job(store, receiver.url)
        log = final_log(outbox, job.id)
        time.sleep(1.0)  # longer than the whole retry schedule
        assert len(receiver.received) == 1
    finally:
        receiver.stop()
    assert [(e["status_code"], e["outcome"]) for e in log] == [(410, "gone")]
    assert outbox.deliveries(job.id) == log


def test_after_410_the_jobs_later_events_are_not_sent(
    store: JobStore, outbox: Outbox, start_worker: Callable[..., WebhookWorker]
) -> None:
    receiver = Receiver(script=[Reply(410)] + [Reply(204)] * 5).start()
    try:
        start_worker().wait_ready()
        job = Job.new(
            "what?", PARAMS, image_count=1, webhook_url=receiver.url, webhook_events=EVENT_TYPES
        )
        store.create(job, [b"img"])
        claim = store.claim(job.id, max_attempts=3)  # job.started: answered 410
        assert claim.job is not None
        wait_until(lambda: bool(outbox.deliveries(job.id)), 10, "the started event's attempt")
        store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "a cat"})
        wait_until(lambda: len(outbox.deliveries(job.id)) == 2, 10, "the succeeded event")
        time.sleep(0.5)
        assert len(receiver.received) == 1  # only the started event reached the endpoint
    finally:
        receiver.stop()
    log = outbox.deliveries(job.id)
    assert [(e["type"], e["status_code"], e["outcome"]) for e in log] == [
        ("job.started", 410, "gone"),
        ("job.succeeded", None, "gone"),
    ]
    assert "410" in log[1]["error"]


def test_a_loopback_url_is_refused_at_delivery_time_unless_allowlisted(
    store: JobStore, outbox: Outbox, receiver: Receiver, start_worker: Callable[..., WebhookWorker]
) -> None:
    start_worker(WEBHOOK_ALLOWED_CIDRS="").wait_ready()
    job = finished_job(store, receiver.url)
    (entry,) = final_log(outbox, job.id)
    assert entry["outcome"] == "refused" and entry["status_code"] is None
    assert "127.0.0.1" in entry["error"] and "loopback" in entry["error"]
    time.sleep(0.5)
    assert receiver.received == []


def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    store: JobStore, outbox: Outbox, receiver: Receiver, start_worker: Callable[..., WebhookWorker]
) -> None:
    target = Receiver().start()
    receiver.script = [Reply(302, {"Location": target.url})]
    try:
        start_worker().wait_ready()
        job = finished_job(store, receiver.url)
        log = final_log(outbox, job.id)
        assert target.received == []
    finally:
        target.stop()
    assert [(e["status_code"], e["outcome"]) for e in log] == [
        (302, "retrying"),
        (204, "delivered"),
    ]
    assert "redirect" in log[0]["error"]
    assert len(receiver.received) == 2


def test_retry_after_is_honoured(
    store: JobStore, outbox: Outbox, receiver: Receiver, start_worker: Callable[..., WebhookWorker]
) -> None:
    receiver.script = [Reply(503, {"Retry-After": "2"})]
    start_worker().wait_ready()
    job = finished_job(store, receiver.url)
    log = final_log(outbox, job.id)
    first, second = receiver.wait_for(2)
    # The schedule alone would have retried after 0.2 s.
    assert second.at - first.at >= 2.0
    assert [e["outcome"] for e in log] == ["retrying", "delivered"]
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    # Each attempt carries its own, fresh timestamp (and so its own signature).
    assert int(second.headers["webhook-timestamp"]) >= int(first.headers["webhook-timestamp"]) + 1


def test_only_terminal_events_by_default_and_started_when_subscribed(
    store: JobStore, outbox: Outbox, receiver: Receiver, start_worker: Callable[..., WebhookWorker]
) -> None:
    start_worker().wait_ready()
    default = finished_job(store, receiver.url, status=JobStatus.FAILED)
    subscribed = finished_job(store, receiver.url, events=("job.started", "job.succeeded"))
    final_log(outbox, default.id)
    wait_until(lambda: len(outbox.deliveries(subscribed.id)) == 2, 10, "two deliveries")
    requests = receiver.wait_for(3)
    time.sleep(0.3)
    assert len(receiver.received) == 3
    seen = sorted((p["data"]["id"], p["type"]) for p in (verified(r, OLD_SECRET) for r in requests))
    assert seen == sorted(
        [
            (default.id, "job.failed"),
            (subscribed.id, "job.started"),
            (subscribed.id, "job.succeeded"),
        ]
    )
    started = next(
        p for p in (verified(r, OLD_SECRET) for r in requests) if p["type"] == "job.started"
    )
    assert started["data"]["status"] == "running"


def test_sigkill_before_delivery_loses_nothing(
    store: JobStore, outbox: Outbox, receiver: Receiver, start_worker: Callable[..., WebhookWorker]
) -> None:
    # Staged while no webhook worker runs at all.
    job = finished_job(store, receiver.url)
    time.sleep(0.3)
    assert receiver.received == []
    # A worker killed while it starts, before it could deliver anything.
    worker = start_worker()
    time.sleep(0.2)
    worker.kill()
    assert receiver.received == []
    worker.restart().wait_ready()
    log = final_log(outbox, job.id, timeout=LEASE_S + 10)
    requests = receiver.wait_for(1)
    assert log[-1]["outcome"] == "delivered"
    assert {r.headers["webhook-id"] for r in requests} == {log[-1]["event_id"]}


def test_sigkill_during_delivery_loses_nothing(
    store: JobStore, outbox: Outbox, receiver: Receiver, start_worker: Callable[..., WebhookWorker]
) -> None:
    release = threading.Event()
    receiver.script = [Reply(204, hold=release)]
    worker = start_worker().wait_ready()
    job = finished_job(store, receiver.url)
    receiver.wait_for(1)  # the worker is now waiting for the reply
    worker.kill()
    release.set()
    assert outbox.deliveries(job.id) == []  # the attempt died before it was recorded
    killed_at = time.monotonic()
    worker.restart().wait_ready()
    log = final_log(outbox, job.id, timeout=LEASE_S + 10)
    first, second = receiver.wait_for(2)
    # Taken over only once the dead worker's lease ran out, under the same webhook-id.
    assert second.at - killed_at >= LEASE_S - 1.5
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == log[-1]["event_id"]
    # The receiver got two sends: the re-send is attempt 2 (attempt 1's outcome was never
    # recorded, so the log has no entry numbered 1).
    assert [(e["attempt"], e["outcome"]) for e in log] == [(2, "delivered")]
    verified(second, NEW_SECRET)


def test_no_secret_means_nothing_is_sent_unsigned(
    store: JobStore, outbox: Outbox, receiver: Receiver, start_worker: Callable[..., WebhookWorker]
) -> None:
    start_worker(WEBHOOK_SECRETS="").wait_ready()
    job = finished_job(store, receiver.url)
    log = final_log(outbox, job.id)
    assert [e["outcome"] for e in log] == ["retrying"] * 5 + ["gave_up"]
    assert all("WEBHOOK_SECRETS" in e["error"] for e in log)
    assert receiver.received == []


def test_the_webhook_worker_does_not_import_torch() -> None:
    code = (
        "import sys, internvl_queue.webhooks.main\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# -- the whole path -----------------------------------------------------------------------------
def test_the_whole_path_submit_answer_webhook_and_deliveries(
    redis_client: redis.Redis,
    make_app: Callable[..., Flask],
    settings: Settings,
    worker: WorkerProcess,
    receiver: Receiver,
    start_worker: Callable[..., WebhookWorker],
) -> None:
    """API (with a key) -> GPU worker -> outbox -> webhook worker -> receiver, verified by the
    receiver's own check; the attempt is readable at /v1/jobs/<id>/deliveries."""
    start_worker().wait_ready()
    api_settings = replace(
        settings, webhook_secrets=f"{NEW_SECRET},{OLD_SECRET}", webhook_allowed_cidrs="127.0.0.0/8"
    )
    app = make_app(api_settings)
    keys = ApiKeyStore(redis_client)
    alice = {"Authorization": f"Bearer {keys.create('alice')[1]}"}
    bob = {"Authorization": f"Bearer {keys.create('bob')[1]}"}
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_port}"
    try:
        reply = http.post(
            f"{api}/v1/jobs",
            data={
                "question": "What is in the picture?",
                "max_new_tokens": "6",
                "webhook_url": receiver.url,
                "webhook_events": "job.started,job.succeeded",
            },
            files=[("image", ("a.jpg", photo(64, 48, seed=11), "image/jpeg"))],
            headers=alice,
            timeout=30,
        )
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["id"]
        done = http.get(f"{api}/v1/jobs/{job_id}?wait=60", headers=alice, timeout=90).json()
        assert done["status"] == "succeeded", done
        started, succeeded = receiver.wait_for(2)
        first, last = verified(started, OLD_SECRET), verified(succeeded, NEW_SECRET)
        assert (first["type"], last["type"]) == ("job.started", "job.succeeded")
        assert last["data"]["id"] == job_id
        assert last["data"]["result"]["answer"] == done["result"]["answer"]
        wait_until(lambda: len(_deliveries(api, job_id, alice)) == 2, 10, "both attempts logged")
        log = _deliveries(api, job_id, alice)
        assert [(e["type"], e["outcome"], e["status_code"]) for e in log] == [
            ("job.started", "delivered", 204),
            ("job.succeeded", "delivered", 204),
        ]
        assert (
            http.get(f"{api}/v1/jobs/{job_id}/deliveries", headers=bob, timeout=10).status_code
            == 404
        )
    finally:
        server.shutdown()
        server.server_close()


def _deliveries(api: str, job_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    reply = http.get(f"{api}/v1/jobs/{job_id}/deliveries", headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    log: list[dict[str, Any]] = reply.json()["deliveries"]
    return log
