"""The outbox pump: a thread in each webhook worker that turns due events into Celery tasks.

Every ``poll_s`` it leases the due events (``Outbox.lease_due``: atomic, so several workers
polling at once never lease one event twice) and dispatches one task per event, carrying the
event id and its lease token. Nothing is lost if a dispatch fails or a worker dies with the
task in hand: the lease runs out after ``lease_s`` and the event is leased and dispatched again.

Backpressure: it leases only as many events as there is room for in the broker queue (up to
``batch``), so a backlog of slow endpoints does not fill the queue with tasks whose leases run
out before they start (they would be skipped as stale, but would still cost a message each).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from ..core.outage import Outage
from ..core.outbox import Outbox

__all__ = ["OutboxPump"]

log = logging.getLogger("internvl_queue.webhooks")


class OutboxPump:
    def __init__(
        self,
        outbox: Outbox,
        dispatch: Callable[[str, str], None],
        *,
        poll_s: float,
        batch: int,
        backlog: Callable[[], int] = lambda: 0,
        outage: Outage | None = None,
    ) -> None:
        self.outbox = outbox
        self.dispatch = dispatch  # (event_id, lease_token) -> a task on the webhook queue
        self.poll_s = poll_s
        self.batch = batch
        self.backlog = backlog  # tasks already waiting in the broker queue
        # Redis down: one line when the polls start failing and one when they work again, not a
        # traceback every poll.
        self.outage = outage or Outage(log, "Redis")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dispatch_failed = False  # in the last pump_once

    def pump_once(self, now: float | None = None) -> int:
        """Lease what is due and dispatch it; the number of events dispatched."""
        room = self.batch - self.backlog()
        leased = self.outbox.lease_due(time.time() if now is None else now, room)
        sent = 0
        self._dispatch_failed = False
        for event_id, token in leased:
            try:
                self.dispatch(event_id, token)
                sent += 1
            except Exception as exc:  # the broker went away between the lease and now
                # Its lease runs out and the next poll after that dispatches it again. Part of
                # the outage (one line for all), not a line per event.
                self._dispatch_failed = True
                self.outage.failed(exc, f"dispatching webhook {event_id}, retried later")
        return sent

    def _run(self) -> None:
        while not self._stop.is_set():
            full = False
            try:
                full = self.pump_once() >= self.batch
                if not self._dispatch_failed:  # the lease worked, the broker did not: still down
                    self.outage.answered()
            except redis.RedisError as exc:
                self.outage.failed(exc, "polling the webhook outbox")
            except Exception:
                log.exception("outbox pump: poll failed; trying again")
            if not full:  # a full batch suggests more are due: poll again at once
                self._stop.wait(self.poll_s)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="outbox-pump", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
