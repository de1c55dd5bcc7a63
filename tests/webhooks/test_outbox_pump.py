"""The outbox pump against a real Redis; the dispatch seam records instead of sending tasks."""

from __future__ import annotations

import logging
import time

import pytest
import redis

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.outbox import Outbox
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from internvl_queue.webhooks.outbox_pump import OutboxPump


def _stage_events(client: redis.Redis, count: int) -> None:
    store = JobStore(client, retention_s=3600)
    for _ in range(count):
        job = store.create(
            Job.new(
                "q?",
                JobParams(max_new_tokens=8, max_tiles=1),
                image_count=1,
                webhook_url="https://hooks.example.com/x",
                webhook_events=("job.succeeded",),
            ),
            [b"i"],
        )
        claim = store.claim(job.id, max_attempts=3)
        assert claim.job is not None
        store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "a"})


def test_dispatches_each_due_event_once_and_leaves_room_for_the_backlog(
    redis_client: redis.Redis,
) -> None:
    _stage_events(redis_client, 5)
    outbox = Outbox(redis_client, lease_s=30, retention_s=3600)
    sent: list[tuple[str, str]] = []
    backlog = [3]
    pump = OutboxPump(
        outbox, lambda e, t: sent.append((e, t)), poll_s=0.05, batch=4, backlog=lambda: backlog[0]
    )
    assert pump.pump_once() == 1  # 4 - 3 already waiting in the queue
    backlog[0] = 0
    assert pump.pump_once() == 4
    assert pump.pump_once() == 0  # all leased now
    assert len({e for e, _ in sent}) == 5
    for event_id, token in sent:
        event = outbox.load(event_id)
        assert event is not None and event.lease_token == token


def test_a_failed_dispatch_is_retried_after_the_lease(redis_client: redis.Redis) -> None:
    _stage_events(redis_client, 1)
    outbox = Outbox(redis_client, lease_s=0.3, retention_s=3600)
    sent: list[str] = []
    failing = [True]

    def dispatch(event_id: str, token: str) -> None:
        if failing[0]:
            raise ConnectionError("broker down")
        sent.append(event_id)

    pump = OutboxPump(outbox, dispatch, poll_s=0.02, batch=10)
    pump.start()
    try:
        time.sleep(0.1)
        assert sent == []
        failing[0] = False
        deadline = time.monotonic() + 5
        while not sent:
            assert time.monotonic() < deadline, "not dispatched again"
            time.sleep(0.02)
    finally:
        started = time.monotonic()
        pump.stop()
        assert time.monotonic() - started < 1  # stops promptly
    assert len(sent) == 1


def test_a_broker_that_refuses_dispatches_is_one_outage_not_an_answer(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis leased the events but the broker refused them (it died in between): the outage
    is logged once, and the pass that leased them does not end it."""
    _stage_events(redis_client, 3)
    outbox = Outbox(redis_client, lease_s=30, retention_s=3600)

    def dispatch(event_id: str, token: str) -> None:
        raise ConnectionError("broker down")

    pump = OutboxPump(outbox, dispatch, poll_s=0.02, batch=10)
    with caplog.at_level(logging.DEBUG, logger="internvl_queue.webhooks"):
        assert pump.pump_once() == 0
        assert pump._dispatch_failed and pump.outage.down
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].startswith("Redis unreachable (dispatching webhook")
