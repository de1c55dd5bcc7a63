"""The store's lifecycle moves: cancel, the queued index, webhook events staged with the state
change, and waiting for a job to finish."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.keys import event_key, job_key, outbox_key, queued_key
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import CancelOutcome, ClaimOutcome, JobStore
from internvl_queue.core.webhook_events import WebhookEvent

PARAMS = JobParams(max_new_tokens=8, max_tiles=2)


def _store(client: redis.Redis) -> JobStore:
    return JobStore(client, retention_s=100, event_ttl_s=50)


def _new(store: JobStore, **webhook: object) -> Job:
    job = Job.new("what?", PARAMS, image_count=1, **webhook)  # type: ignore[arg-type]
    return store.create(job, [b"img"])


def _winners(move: Callable[[], object], racers: int = 8) -> int:
    """How many of ``racers`` threads calling ``move`` at once got a result (not None)."""
    with ThreadPoolExecutor(racers) as pool:
        results = list(pool.map(lambda _: move(), range(racers)))
    return sum(r is not None for r in results)


def _running(store: JobStore, job: Job, lease_s: float = 15.0) -> Job:
    claim = store.claim(job.id, max_attempts=3, lease_s=lease_s)
    assert claim.outcome is ClaimOutcome.CLAIMED and claim.job is not None
    return claim.job


def test_cancel_of_a_queued_job_is_immediate_and_final(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    job = _new(store)
    outcome, canceled = store.cancel(job.id)
    assert outcome is CancelOutcome.CANCELED and canceled is not None
    assert canceled.status is JobStatus.CANCELED and canceled.error is not None
    assert store.images(job.id) == []
    # The message is still in the broker; its delivery finds a finished job and runs nothing.
    assert store.claim(job.id, max_attempts=3).outcome is ClaimOutcome.ALREADY_TERMINAL
    assert store.cancel(job.id)[0] is CancelOutcome.ALREADY_FINISHED
    assert store.cancel("nope")[0] is CancelOutcome.MISSING


def test_a_running_job_asked_to_cancel_ends_canceled_whatever_it_answers(
    redis_client: redis.Redis,
) -> None:
    store = _store(redis_client)
    running = _running(store, _new(store))
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("iq:cancel")
    outcome, asked = store.cancel(running.id)
    assert outcome is CancelOutcome.REQUESTED and asked is not None
    assert asked.status is JobStatus.RUNNING and asked.cancel_requested_at is not None
    deadline = time.monotonic() + 2
    message = None
    while message is None and time.monotonic() < deadline:  # the first read is the subscribe reply
        message = pubsub.get_message(timeout=0.5)
    assert message is not None and message["data"] == running.id.encode()
    pubsub.close()
    done = store.finish(running, JobStatus.SUCCEEDED, result={"answer": "late"})
    assert done is not None
    assert done.status is JobStatus.CANCELED and done.result is None
    assert done.error is not None and done.error["code"] == "canceled"


def test_a_redelivered_job_with_a_cancel_pending_is_canceled_not_rerun(
    redis_client: redis.Redis,
) -> None:
    store = _store(redis_client)
    running = _running(store, _new(store), lease_s=0)
    store.cancel(running.id)
    claim = store.claim(running.id, max_attempts=3)  # its worker died; the message came back
    assert claim.outcome is ClaimOutcome.CANCELED
    assert claim.job is not None and claim.job.status is JobStatus.CANCELED


def test_queue_positions_follow_submission_order(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    first, second, third = (_new(store) for _ in range(3))
    assert [store.queue_position(j) for j in (first, second, third)] == [1, 2, 3]
    assert store.queued_count() == 3
    _running(store, first)
    store.cancel(third.id)
    assert store.queue_position(first) is None
    assert store.queue_position(second) == 1
    assert store.queued_count() == 1
    store.cancel(second.id)
    assert redis_client.zcard(queued_key()) == 0


def test_expires_at_is_renewed_when_the_job_finishes(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    job = _new(store)
    assert job.expires_at == pytest.approx(job.created_at + 100, abs=0.05)
    time.sleep(0.05)
    done = store.finish(_running(store, job), JobStatus.FAILED, error={"code": "x", "message": "y"})
    assert done is not None and done.finished_at is not None
    assert done.expires_at == pytest.approx(done.finished_at + 100, abs=0.05)
    assert store.get(job.id) == done


def _outbox(client: redis.Redis) -> list[WebhookEvent]:
    ids = [i.decode() for i in client.zrange(outbox_key(), 0, -1)]  # type: ignore[union-attr]
    return [WebhookEvent.from_hash(client.hgetall(event_key(i))) for i in ids]  # type: ignore[arg-type]


def test_terminal_events_are_staged_with_the_state_change(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    job = _new(
        store,
        webhook_url="https://example.com/hook",
        webhook_events=("job.succeeded", "job.failed", "job.canceled"),
    )
    running = _running(store, job)
    assert _outbox(redis_client) == []  # job.started was not asked for
    done = store.finish(running, JobStatus.SUCCEEDED, result={"answer": "a cat"})
    assert done is not None
    [event] = _outbox(redis_client)
    assert (event.type, event.job_id, event.url) == ("job.succeeded", job.id, job.webhook_url)
    assert event.id.startswith("msg_")
    import json

    payload = json.loads(event.body)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["status"] == "succeeded"
    assert payload["data"]["result"] == {"answer": "a cat"}
    assert 0 < redis_client.ttl(event_key(event.id)) <= 51
    # A redelivered message for the finished job stages nothing more.
    store.claim(job.id, max_attempts=3)
    assert len(_outbox(redis_client)) == 1


def test_started_event_only_when_subscribed_and_none_without_a_webhook(
    redis_client: redis.Redis,
) -> None:
    store = _store(redis_client)
    plain = _new(store)
    _running(store, plain)
    store.cancel(plain.id)
    assert _outbox(redis_client) == []
    job = _new(store, webhook_url="https://example.com/h", webhook_events=("job.started",))
    _running(store, job)
    store.cancel(job.id)  # canceled is not subscribed
    assert [e.type for e in _outbox(redis_client)] == ["job.started"]


def test_wait_finished_wakes_on_completion_not_on_a_timer(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    running = _running(store, _new(store))
    finished_at: list[float] = []

    def finish_later() -> None:
        time.sleep(0.3)
        store.finish(running, JobStatus.SUCCEEDED, result={"answer": "ok"})
        finished_at.append(time.monotonic())

    threading.Thread(target=finish_later).start()
    job = store.wait_finished(running.id, timeout_s=10)
    woke = time.monotonic()
    assert job is not None and job.status is JobStatus.SUCCEEDED
    assert woke - finished_at[0] < 0.5  # woken by the notification, far before the 10 s limit


def test_wait_finished_returns_the_current_job_after_the_timeout(
    redis_client: redis.Redis,
) -> None:
    store = _store(redis_client)
    job = _new(store)
    started = time.monotonic()
    seen = store.wait_finished(job.id, timeout_s=0.4)
    assert seen is not None and seen.status is JobStatus.QUEUED
    assert 0.35 < time.monotonic() - started < 2
    assert store.wait_finished("nope", timeout_s=5) is None


def test_a_lapsed_lease_puts_the_job_back_once_whatever_the_race(redis_client: redis.Redis) -> None:
    store = _store(redis_client)
    job = _running(store, _new(store), lease_s=0.2)
    held = {job.id: job.attempt_token}
    assert store.renew_leases(held, lease_s=0.2) == 1  # its worker is alive: renewed
    assert store.lapsed_leases(time.time()) == []
    time.sleep(0.3)  # ... then it stops renewing
    assert store.lapsed_leases(time.time()) == [job.id]
    # Eight reapers at once: exactly one puts it back.
    assert _winners(lambda: store.requeue_lapsed(job.id)) == 1
    back = store.get(job.id)
    assert back is not None and back.status is JobStatus.QUEUED
    assert (back.attempts, back.attempt_token, back.worker) == (1, "", "")
    assert store.queue_position(job) == 1
    assert store.lapsed_leases(time.time()) == []
    assert store.take_due_dispatches(time.time(), retry_after_s=5) == [job.id]
    assert store.take_due_dispatches(time.time(), retry_after_s=5) == []  # taken once
    # The old delivery can neither renew nor store; the next one runs as attempt 2.
    assert store.renew_leases(held, lease_s=10) == 0
    assert store.finish(job, JobStatus.SUCCEEDED, result={"answer": "late"}) is None
    again = store.claim(job.id, max_attempts=3)
    assert again.outcome is ClaimOutcome.CLAIMED and again.job is not None
    assert again.job.attempts == 2


def test_a_job_queued_past_its_deadline_times_out_once_whatever_the_race(
    redis_client: redis.Redis,
) -> None:
    store = _store(redis_client)
    hook = {"webhook_url": "https://example.com/hook", "webhook_events": ("job.failed",)}
    quick = Job.new("q", JobParams(max_new_tokens=8, max_tiles=1, timeout_s=1), 1, **hook)  # type: ignore[arg-type]
    due = store.create(quick, [b"img"])
    later = _new(store)  # the default deadline: not due
    assert store.overdue_queued(time.time()) == []
    assert store.time_out_queued(due.id) is None  # not yet
    time.sleep(1.1)
    assert store.overdue_queued(time.time()) == [due.id]
    assert _winners(lambda: store.time_out_queued(due.id)) == 1
    ended = store.get(due.id)
    assert ended is not None and ended.status is JobStatus.FAILED
    assert ended.error is not None and ended.error["code"] == "timeout"
    assert redis_client.ttl(job_key(due.id)) > 90  # kept the retention time from now
    assert store.queue_position(due) is None and store.queued_count() == 1
    assert store.images(due.id) == []
    assert [e.type for e in _outbox(redis_client)] == ["job.failed"]
    # Its message, when a worker takes it at last, finds it finished.
    assert store.claim(due.id, max_attempts=3).outcome is ClaimOutcome.ALREADY_TERMINAL
    assert store.get(later.id).status is JobStatus.QUEUED  # type: ignore[union-attr]
