"""A daemon thread that republishes the worker's heartbeat until stopped."""

from __future__ import annotations

import logging
import threading
import time

import redis

from .memory import IdleHeapTrimmer
from .runtime import WorkerRuntime

__all__ = ["Heartbeat"]

log = logging.getLogger(__name__)

_LOG_EVERY_S = 60.0


class Heartbeat:
    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self.trimmer = IdleHeapTrimmer()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.runtime.publish_heartbeat()  # visible at once, not one period later
        self._thread.start()

    def stop(self, *, remove: bool = True) -> None:
        """Stop publishing; ``remove`` the entry too (a failed worker keeps its own)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if not remove:
            return
        try:
            self.runtime.registry.remove(self.runtime.name)
        except redis.RedisError as exc:
            log.warning("could not remove heartbeat: %s", exc)

    def _loop(self) -> None:
        logged_jobs, last_log = -1, time.monotonic()
        while not self._stop.wait(self.runtime.settings.heartbeat_interval_s):
            try:
                info = self.runtime.publish_heartbeat()
            except redis.RedisError as exc:  # Redis blips must not kill the thread
                log.warning("heartbeat failed: %s", exc)
                continue
            self.trimmer.observe(busy=self.runtime.holds_jobs())
            # The engine's counters in the log too, once a minute while there is work.
            if info.engine and time.monotonic() - last_log >= _LOG_EVERY_S:
                if info.engine["batched_jobs"] != logged_jobs:
                    log.info("engine: %s", info.engine)
                    logged_jobs = int(info.engine["batched_jobs"])
                last_log = time.monotonic()
