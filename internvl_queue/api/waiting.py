"""Long polls: ``?wait=N`` on reads, ``Prefer: wait=N`` on submits, and who waits for them.

``Prefer: respond-async`` (RFC 7240) asks for the asynchronous reply, the 202, at once: it wins
over a ``wait`` in the same header.

Under ``internvl-queue api`` a long poll holds no thread: the view hands the wait to the API's
front (``api/front.py``) as a ``DeferredWait``, which the front awaits in its event loop, then
renders the reply on a thread (one Redis read). Elsewhere (Flask's own server, the test client)
the view waits on its thread. Either way each API process holds at most ``INTERNVL_MAX_WAITERS``
long polls at once (``JobWaiters``); one more is answered at once with the job as it is (and
``Retry-After: 1``). The waiters of a process share one Redis pub/sub listener (a thread
subscribed to every job's "done" channel) instead of opening a subscription each.

When the process stops (``SIGTERM``: a restart, an upgrade) the front sets its ``stopping`` event:
every long poll it holds is answered at once with its job as it is then, as one not waited for
(``Retry-After: 1``: poll again), and one that arrives later is not held at all.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import redis
from flask import Flask, Response, current_app, request

from ..core.errors import ValidationFailed
from ..core.job import Job
from ..core.keys import done_channel
from ..core.outage import Outage

__all__ = [
    "DEFER_ENVIRON_KEY",
    "MAX_WAIT_S",
    "WAITERS_EXTENSION",
    "DeferredWait",
    "JobWaiters",
    "job_waiters",
    "prefer_wait",
    "prefers_respond_async",
    "query_wait",
    "wait_for_job",
]

log = logging.getLogger(__name__)

WAITERS_EXTENSION = "internvl_queue.waiters"
# The WSGI environ key under which the front offers to await long polls: a list the view appends
# its ``DeferredWait`` to (see ``wait_for_job``).
DEFER_ENVIRON_KEY = "internvl_queue.defer"

T = TypeVar("T")
# Runs a blocking callable on one of the front's threads.
RunOnThread = Callable[[Callable[[], T]], Awaitable[T]]
ReadJob = Callable[[], Job | None]
# The view's reply for the job as found (terminal, or as it was when the wait ended), and
# whether it was waited for (False: this process held as many long polls as it may, or is
# stopping; either way the caller should poll again).
RenderJob = Callable[[Job, bool], Response]


class _Wake(Protocol):
    def set(self) -> None: ...


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
        self._events: dict[str, set[_Wake]] = defaultdict(set)
        self._listening = threading.Event()  # subscribed now: a finish cannot be missed
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def wait_finished(self, job: Job, timeout_s: float, read: ReadJob) -> tuple[Job | None, bool]:
        """(``job`` once terminal, or as it is after ``timeout_s``; whether it was waited for),
        waiting on this thread.

        Not waited for when this process already holds ``max_waiters`` long polls, or the
        listener cannot subscribe: then ``job`` comes back as it was given, at once.
        """
        woken = threading.Event()
        if not self.listening() or not self.enter(job.id, woken):
            return job, False
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
            self.leave(job.id, woken)

    def enter(self, job_id: str, wake: _Wake) -> bool:
        """Count a long poll on ``job_id``, woken by ``wake.set()`` whenever the job may have
        finished (call ``listening`` first); False, and nothing counted, when full. Never
        blocks (the event loop calls it)."""
        with self._lock:
            if self._waiting >= self.max_waiters:
                return False
            self._waiting += 1
            self._events[job_id].add(wake)
        return True

    def leave(self, job_id: str, wake: _Wake) -> None:
        """The end of a long poll that ``enter`` counted."""
        with self._lock:
            self._events[job_id].discard(wake)
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

    def listening(self) -> bool:
        """Whether the listener is subscribed (so that no finish is missed); starts it if need
        be, and then waits up to 5 s for it."""
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
        # One line an outage, not one a second (a WARNING: the request handlers' is the ERROR).
        outage = Outage(log, "Redis (long-poll listener)", level=logging.WARNING)
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
                outage.answered()
                self._wake_all()  # a finish may have been missed while (re)subscribing
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "pmessage":
                        self._wake(message["channel"].decode()[prefix:])
            except redis.RedisError as exc:
                self._listening.clear()
                if self._closed.is_set():
                    return
                outage.failed(exc, "resubscribing")
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


class _LoopWake:
    """An ``asyncio.Event`` that the listener thread may set."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    def set(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)


class DeferredWait:
    """A long poll handed to the front: awaited in its event loop, holding no thread."""

    def __init__(
        self, waiters: JobWaiters, job: Job, timeout_s: float, read: ReadJob, render: RenderJob
    ) -> None:
        self.waiters, self.job, self.timeout_s = waiters, job, timeout_s
        self.read, self.render = read, render

    async def reply(self, run: RunOnThread[Any], stopping: asyncio.Event) -> Response:
        """The view's reply once the job is terminal, the wait is over or ``stopping`` is set;
        Redis reads and the rendering run on the front's threads (``run``), the wait itself on
        none."""
        if stopping.is_set():
            return await run(lambda: self.render(self.job, False))
        wake = _LoopWake(asyncio.get_running_loop())
        deadline = time.monotonic() + self.timeout_s
        if not await run(self.waiters.listening) or not self.waiters.enter(self.job.id, wake):
            return await run(lambda: self.render(self.job, False))
        waited = True
        try:
            current = await run(self.read)  # after entering: a finish from now on wakes us
            while current is not None and not current.status.is_terminal:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if stopping.is_set():  # the job was read after the stop began: as it is now
                    waited = False
                    break
                await _until_set((wake.event, stopping), left)
                wake.event.clear()
                current = await run(self.read)
        finally:
            self.waiters.leave(self.job.id, wake)
        return await run(lambda: self.render(current or self.job, waited))


async def _until_set(events: tuple[asyncio.Event, ...], timeout_s: float) -> None:
    """Returns once any of ``events`` is set, or after ``timeout_s``."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def wait_for_job(job: Job, timeout_s: float, read: ReadJob, render: RenderJob) -> Response:
    """The reply to a long poll on ``job``: ``render`` of the job once terminal or after
    ``timeout_s``. Under the front, the wait is handed to it and this returns a placeholder
    that the front replaces; elsewhere it waits on this thread."""
    waiters = job_waiters()
    offered: list[DeferredWait] | None = request.environ.get(DEFER_ENVIRON_KEY)
    if offered is None:
        found, waited = waiters.wait_finished(job, timeout_s, read)
        return render(found or job, waited)
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    environ = request.environ

    def render_in_request(found: Job, waited: bool) -> Response:
        # On the front's thread, later: the app's error handlers and after-request hooks apply
        # as they would have to a reply made now.
        with app.request_context(environ):
            try:
                made = app.make_response(render(found, waited))
            except Exception as exc:
                made = app.make_response(app.handle_user_exception(exc))
            return app.process_response(made)

    offered.append(DeferredWait(waiters, job, timeout_s, read, render_in_request))
    return Response(status=204)  # never sent: the front sends what ``render_in_request`` makes


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
