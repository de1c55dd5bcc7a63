"""Receivers that never finish replying: every attempt ends at its deadline (WEBHOOK_TIMEOUT_S in
all, not per read), two attempts of one event never overlap, and 16 such receivers do not stall
delivery to a healthy one."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import pytest

from internvl_queue.core.outbox import Outbox
from internvl_queue.core.store import JobStore
from internvl_queue.webhooks.http import DeliveryFailed, post
from tests.receiver import Receiver
from tests.webhooks.drip import DripConnection, DripReceiver
from tests.webhooks.test_http import LOOPBACK as LOOPBACK_ALLOWED
from tests.webhooks.test_webhooks import final_log, finished_job
from tests.webhooks.worker_process import WebhookWorker, wait_until


@pytest.fixture
def drip() -> Iterator[DripReceiver]:
    receiver = DripReceiver(period_s=0.5).start()
    yield receiver
    receiver.stop()


def test_a_dripping_receiver_is_cut_off_at_the_deadline(drip: DripReceiver) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryFailed, match="no complete reply within 1 s"):
        post(drip.url("a"), b"{}", {"webhook-id": "msg_a"}, timeout_s=1.0, allowed=LOOPBACK_ALLOWED)
    took = time.monotonic() - started
    assert 0.9 <= took < 1.5, took  # before the fix: 29.5 s (a fresh read timeout per byte)
    wait_until(lambda: drip.open_now() == 0, 2, "the connection closed")
    [connection] = drip.connections
    assert connection.closed is not None and connection.closed - started < 1.6


def test_a_host_that_does_not_resolve_in_time_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The system resolver is the outermost edge here: one that hangs."""
    import socket

    real = socket.getaddrinfo

    def hanging(host: str, *args: object, **kwargs: object) -> object:
        if host == "slow-dns.example":
            time.sleep(3)
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    started = time.monotonic()
    with pytest.raises(DeliveryFailed, match="did not resolve within"):
        post("http://slow-dns.example/", b"{}", {}, timeout_s=0.5, allowed=LOOPBACK_ALLOWED)
    assert time.monotonic() - started < 1.0


def _overlaps(connections: list[DripConnection]) -> list[tuple[str, float, float]]:
    by_event: dict[str, list[DripConnection]] = defaultdict(list)
    for c in connections:
        by_event[c.webhook_id].append(c)
    found = []
    for event_id, attempts in by_event.items():
        attempts.sort(key=lambda c: c.opened)
        for before, after in itertools.pairwise(attempts):
            assert before.closed is not None
            if after.opened < before.closed:
                found.append((event_id, before.closed, after.opened))
    return found


def test_sixteen_dripping_receivers_do_not_stall_a_healthy_one(
    store: JobStore,
    outbox: Outbox,
    receiver: Receiver,
    drip: DripReceiver,
    start_worker: Callable[..., WebhookWorker],
) -> None:
    # As many dripping receivers as the worker has threads (WEBHOOK_CONCURRENCY, 16).
    worker = start_worker(WEBHOOK_TIMEOUT_S="1", WEBHOOK_CONCURRENCY="16").wait_ready()
    dripping = [finished_job(store, drip.url(f"r{i}")) for i in range(16)]
    wait_until(lambda: drip.open_now() >= 8, 10, "the drips holding the worker's threads", worker)
    healthy = finished_job(store, receiver.url)
    submitted = time.monotonic()
    [request] = receiver.wait_for(1, timeout=10)
    # Before the fix: about 30 s (each dripping attempt held a thread for 29.5 s).
    assert request.at - submitted < 4.0, request.at - submitted
    assert final_log(outbox, healthy.id)[-1]["outcome"] == "delivered"

    # Let the drips run through a few rounds of attempts, with the worker's threads all busy.
    for job in dripping:
        log = final_log(outbox, job.id, timeout=40)
        assert log[-1]["outcome"] == "gave_up"
        for entry in log:
            assert "no complete reply within 1 s" in entry["error"], entry
            assert entry["duration_ms"] < 1600, entry
    wait_until(lambda: drip.open_now() == 0, 5, "every dripping connection closed", worker)
    held = [c.closed - c.opened for c in drip.connections if c.closed is not None]
    assert len(held) >= 16 * 6 and max(held) < 1.6, max(held)
    # Never two attempts of one event at once (the lease always outlasts an attempt).
    assert _overlaps(drip.connections) == []
