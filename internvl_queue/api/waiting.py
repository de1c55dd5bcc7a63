"""Long polls: ``?wait=N`` on reads, ``Prefer: wait=N`` on submits, and who waits for them.

``Prefer: respond-async`` (RFC 7240) asks for the asynchronous reply, the 202, at once: it wins
over a ``wait`` in the same header.

A waiting request holds a server thread, so each API process holds at most
``INTERNVL_MAX_WAITERS`` of them at once (``JobWaiters``); one more is answered at once with the
job as it is (and ``Retry-After: 1``), so that long polls can never take every thread from submits
and ``/readyz``. The waiters of a process share one Redis pub/sub listener (a thread subscribed to
every job's "done" channel) instead of opening a subscription each.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import redis
from flask import current_app

from ..core.errors import ValidationFailed
from ..core.job import Job
from ..core.keys import done_channel

__all__ = [
    "MAX_WAIT_S",
    "WAITERS_EXTENSION",
    "JobWaiters",
    "job_waiters",
    "prefer_wait",
    "prefers_respond_async",
    "query_wait",
]

log = logging.getLogger(__name__)

WAITERS_EXTENSION = "internvl_queue.waiters"

MAX_WAIT_S = 60.0

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)
# A preference's name is what comes before its "=" or ";" parameters (RFC 7240 section 2).
_PREFERENCE_NAME = re.compile(r"^\s*([^=;\s]+)")


def query_wait(raw: str | None) -> float:
    """Seconds from ``?wait=``: 0 when absent; 0..60, else a 422."""
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_WAIT_S:
        raise ValidationFailed(
            f"wait must be a number of seconds from 0 to {MAX_WAIT_S:.0f}", code="invalid_parameter"
        )
    return value


def prefer_wait(header: str | None) -> float:
    """Seconds from ``Prefer: wait=N`` (RFC 7240), capped at 60; 0 when absent.

    A preference is a hint, so an unreadable or too large one is capped or ignored, not refused.
    """
    match = _PREFER_WAIT.search(header or "")
    return min(float(match.group(1)), MAX_WAIT_S) if match else 0.0


def prefers_respond_async(header: str | None) -> bool:
    """Whether ``Prefer`` holds ``respond-async`` (names are case-insensitive)."""
    for preference in (header or "").split(","):
        match = _PREFERENCE_NAME.match(preference)
        if match and match.group(1).lower() == "respond-async":
            return True
    return False


class JobWaiters:
    """The long polls of one API process: a cap, and one pub/sub listener that wakes them."""

    def __init__(self, client: redis.Redis, max_waiters: int) -> None:
        self.redis = client
        self.max_waiters = max_waiters
        self._lock = threading.Lock()
        self._waiting = 0
        self._events: dict[str, set[threading.Event]] = defaultdict(set)
        self._listening = threading.Event()  # subscribed now: a finish cannot be missed
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def wait_finished(
        self, job: Job, timeout_s: float, read: Callable[[], Job | None]
    ) -> tuple[Job | None, bool]:
        """(``job`` once terminal, or as it is after ``timeout_s``; whether it was waited for).

        Not waited for when this process already holds ``max_waiters`` long polls, or the
        listener cannot subscribe: then ``job`` comes back as it was given, at once.
        """
        with self._lock:
            full = self._waiting >= self.max_waiters
            if not full:
                self._waiting += 1
        if full or not self._ensure_listening():
            if not full:
                with self._lock:
                    self._waiting -= 1
            return job, False
        job_id = job.id
        woken = threading.Event()
        with self._lock:
            self._events[job_id].add(woken)
        try:
            deadline = time.monotonic() + timeout_s
            current = read()  # after subscribing: a finish from now on sets ``woken``
            while current is not None and not current.status.is_terminal:
                left = deadline - time.monotonic()
                if left <= 0 or not woken.wait(left):
                    break
                woken.clear()
                current = read()
            return current, True
        finally:
            with self._lock:
                self._events[job_id].discard(woken)
                if not self._events[job_id]:
                    del self._events[job_id]
                self._waiting -= 1

    @property
    def waiting(self) -> int:
        return self._waiting

    def close(self) -> None:
        """Stop the listener (an app being torn down); waiting requests are woken."""
        self._closed.set()
        self._wake_all()
        if self._thread is not None:
            self._thread.join(10)

    def _ensure_listening(self) -> bool:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._listen, name="job-waiters", daemon=True
                )
                self._thread.start()
        return self._listening.wait(5.0)

    def _listen(self) -> None:
        pattern = done_channel("*")
        prefix = len(done_channel(""))
        while not self._closed.is_set():
            pubsub = self.redis.pubsub()
            try:
                pubsub.psubscribe(pattern)
                # Listening only once Redis confirmed: a finish published after that reaches us.
                while (confirmed := pubsub.get_message(timeout=1.0)) is None or confirmed[
                    "type"
                ] != "psubscribe":
                    if self._closed.is_set():
                        return
                self._listening.set()
                self._wake_all()  # a finish may have been missed while (re)subscribing
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "pmessage":
                        self._wake(message["channel"].decode()[prefix:])
            except redis.RedisError as exc:
                self._listening.clear()
                if self._closed.is_set():
                    return
                log.warning("long-poll listener lost Redis (%s); resubscribing", exc)
                self._wake_all()  # waiters re-read (and fail or time out) instead of hanging
                time.sleep(1.0)
            finally:
                pubsub.close()

    def _wake(self, job_id: str) -> None:
        with self._lock:
            for event in self._events.get(job_id, ()):
                event.set()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._events.values():
                for event in events:
                    event.set()


def job_waiters() -> JobWaiters:
    """The app's ``JobWaiters`` (made on first use: after gunicorn's fork, in each process)."""
    app = current_app
    found = app.extensions.get(WAITERS_EXTENSION)
    if found is None:
        from .services import services

        svc = services()
        found = app.extensions.setdefault(
            WAITERS_EXTENSION, JobWaiters(svc.store.redis, svc.settings.max_waiters)
        )
    waiters: JobWaiters = found
    return waiters
