"""Telling this worker's running jobs that they were asked to cancel.

The API marks the job (``cancel_requested_at``) and publishes its id on the cancel channel in
the same transaction. One thread per worker process listens on that channel and sets the event
of the job, if it runs here; the engine looks at it between decode steps. Pub/sub is only for
speed: the thread also re-reads the marks of the jobs running here every few seconds (a missed
message while reconnecting), and the store turns any outcome of a marked job into ``canceled``.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from ..core.keys import cancel_channel, job_key

__all__ = ["CancelWatcher"]

log = logging.getLogger(__name__)


class CancelWatcher:
    def __init__(self, client: redis.Redis, *, recheck_s: float = 2.0) -> None:
        self.redis = client
        self.recheck_s = recheck_s
        self._running: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, job_id: str) -> threading.Event:
        """The event set when ``job_id`` is asked to cancel; call before claiming the job."""
        with self._lock:
            return self._running.setdefault(job_id, threading.Event())

    def unwatch(self, job_id: str) -> None:
        with self._lock:
            self._running.pop(job_id, None)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="cancel-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except redis.RedisError as exc:
                log.warning("cancel watcher lost Redis (%s); reconnecting", exc)
                self._stop.wait(1.0)

    def _listen(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(cancel_channel())
            self._recheck()  # anything marked while we were not subscribed
            next_check = time.monotonic() + self.recheck_s
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.5)
                if message is not None and message["type"] == "message":
                    self._signal(message["data"].decode())
                if time.monotonic() >= next_check:
                    self._recheck()
                    next_check = time.monotonic() + self.recheck_s
        finally:
            pubsub.close()

    def _recheck(self) -> None:
        with self._lock:
            ids = list(self._running)
        if not ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(job_key(job_id), "cancel_requested_at")
        for job_id, mark in zip(ids, pipe.execute(), strict=True):
            if mark not in (None, b"null"):
                self._signal(job_id)

    def _signal(self, job_id: str) -> None:
        with self._lock:
            event = self._running.get(job_id)
        if event is not None and not event.is_set():
            log.info("job %s: cancel requested; stopping it", job_id)
            event.set()
