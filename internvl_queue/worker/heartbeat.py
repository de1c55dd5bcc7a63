"""A daemon thread that republishes the worker's heartbeat until stopped."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from ..core.outage import Outage
from ..core.workers import WorkerInfo
from .memory import IdleHeapTrimmer
from .runtime import WorkerRuntime

__all__ = ["Heartbeat", "Summary"]

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
        summary = Summary(self.runtime.info())
        outage = Outage(log, "Redis", level=logging.WARNING)  # one line an outage, not a beat
        while not self._stop.wait(self.runtime.settings.heartbeat_interval_s):
            try:
                info = self.runtime.publish_heartbeat()
            except redis.RedisError as exc:  # Redis blips must not kill the thread
                outage.failed(exc, "publishing the heartbeat")
                continue
            outage.answered()
            self.trimmer.observe(busy=self.runtime.holds_jobs())
            summary.maybe_log(info)


class Summary:
    """The worker's INFO log of its jobs: one line a minute while there is work (the per-job
    lines are at DEBUG: at GPU rates one line per job would be hundreds a second)."""

    def __init__(
        self,
        start: WorkerInfo,
        *,
        every_s: float = _LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_s, self.clock = every_s, clock
        self.last, self.at = start, clock()

    def maybe_log(self, info: WorkerInfo) -> None:
        elapsed = self.clock() - self.at
        if elapsed < self.every_s:
            return
        done = info.jobs_done - self.last.jobs_done
        if done or info.redeliveries_ignored != self.last.redeliveries_ignored:
            log.info(
                "last %.0f s: %d job(s) succeeded, %d failed (%.1f/s), %d redelivery(ies) "
                "ignored; engine: %s",
                elapsed,
                info.jobs_succeeded - self.last.jobs_succeeded,
                info.jobs_failed - self.last.jobs_failed,
                done / elapsed,
                info.redeliveries_ignored - self.last.redeliveries_ignored,
                info.engine,
            )
        self.last, self.at = info, self.clock()
