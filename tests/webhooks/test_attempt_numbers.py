"""The delivery log stays honest when an attempt's outcome is lost: a webhook delivered (204) at
the instant Redis died is sent again later under the same webhook-id (at-least-once), and the log
numbers that re-send as attempt 2, not 1. A real Redis is stopped while the receiver holds the
first request; the delivery runs in-process against it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis

from internvl_queue.cli.redis_server import start_redis
from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.outbox import Outbox
from internvl_queue.core.settings import Settings
from internvl_queue.core.signing import generate_secret
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from internvl_queue.webhooks.delivery import WebhookDelivery
from tests.receiver import Receiver, Reply

LEASE_S = 10.0
EVENTS = ("job.succeeded",)


def _succeeded_job(store: JobStore, webhook_url: str) -> Job:
    """A job that succeeded, with its terminal event due in the outbox."""
    job = store.create(
        Job.new(
            "what?", JobParams(8, 2), image_count=1, webhook_url=webhook_url, webhook_events=EVENTS
        ),
        [b"i"],
    )
    claim = store.claim(job.id, max_attempts=3)
    assert claim.job is not None
    store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "a"})
    return job


def test_a_resend_after_redis_died_mid_attempt_is_logged_as_attempt_2(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis", persistent=True)
    first_reply = threading.Event()
    receiver = Receiver(script=[Reply(204, hold=first_reply), Reply(204)]).start()
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        settings = Settings(
            redis_url=server.url,
            webhook_secrets=generate_secret(),
            webhook_allowed_cidrs="127.0.0.0/8",
            webhook_timeout_s=2.0,
        )
        store = JobStore(client, retention_s=3600)
        outbox = Outbox(client, lease_s=LEASE_S, retention_s=3600)
        delivery = WebhookDelivery(settings, outbox)
        job = _succeeded_job(store, receiver.url)

        ((event_id, token),) = outbox.lease_due(time.time(), limit=1)
        # The receiver has the request; Redis dies before the 204 reaches the webhook worker.
        attempt = threading.Thread(target=delivery.deliver, args=(event_id, token))
        attempt.start()
        receiver.wait_for(1)
        server.stop()
        first_reply.set()
        attempt.join(30)
        assert not attempt.is_alive()

        server.restart()
        # Its lease runs out; the event is leased and sent again, under the same webhook-id.
        ((again, token2),) = outbox.lease_due(time.time() + LEASE_S + 1, limit=1)
        assert again == event_id
        delivery.deliver(event_id, token2)
        first, second = receiver.wait_for(2)
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == event_id

        log = outbox.deliveries(job.id)
        assert [(e["attempt"], e["status_code"], e["outcome"]) for e in log] == [
            (2, 204, "delivered")
        ]
        event = outbox.load(event_id)
        assert event is not None and event.outcome == "delivered"
    finally:
        receiver.stop()
        client.close()
        server.stop()


def test_attempts_are_numbered_when_they_begin_and_only_under_their_lease(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis", persistent=False)
    client = redis.Redis.from_url(server.url)
    try:
        store = JobStore(client, retention_s=3600)
        outbox = Outbox(client, lease_s=LEASE_S, retention_s=3600)
        _succeeded_job(store, "https://h.example/x")
        ((event_id, token),) = outbox.lease_due(time.time(), limit=1)
        assert outbox.begin_attempt(event_id, "not-the-lease") == 0
        assert outbox.begin_attempt(event_id, token) == 1
        ((_, token2),) = outbox.lease_due(time.time() + LEASE_S + 1, limit=1)
        assert outbox.begin_attempt(event_id, token) == 0  # that lease is over
        assert outbox.begin_attempt(event_id, token2) == 2
    finally:
        client.close()
        server.stop()
