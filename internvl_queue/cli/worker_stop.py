"""How a Celery worker process stops: only when asked, and at once when asked twice.

Celery can end its main loop by itself with status 0 (a consumer that crashed on reconnect after
a Redis restart did exactly that), which a supervisor reads as "stopped on purpose" and does not
restart. ``StopRequests`` counts the stop requests Celery received (its ``worker_shutting_down``
signal, sent from its SIGTERM/SIGINT/SIGQUIT handlers): a worker that stopped without one exits 1.
A second request ends the process at once, after ``on_forced_stop`` (Celery itself waits for
the running tasks on a second SIGTERM).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from celery import signals

__all__ = ["StopRequests"]

log = logging.getLogger(__name__)


class StopRequests:
    def __init__(self, on_forced_stop: Callable[[], None] | None = None) -> None:
        self.on_forced_stop = on_forced_stop
        self.count = 0

    def install(self) -> StopRequests:
        signals.worker_shutting_down.connect(self._requested, weak=False)
        return self

    def _requested(self, sig: str = "", **_: Any) -> None:
        self.count += 1
        if self.count == 1:
            log.info("%s: finishing the jobs in hand, then stopping (again to stop now)", sig)
            return
        log.warning("%s again: stopping now; the jobs in hand go back to the queue", sig)
        try:
            if self.on_forced_stop is not None:
                self.on_forced_stop()
        finally:
            os._exit(0)  # asked twice: no clean-up waits on the jobs in hand

    def exit_status(self, celery_status: int) -> int:
        """The process's exit status once Celery's main loop returned with ``celery_status``."""
        if self.count == 0 and not celery_status:
            log.error(
                "the worker stopped although nobody asked it to (see above); exiting with "
                "status 1 so that a supervisor restarts it"
            )
            return 1
        # Asked to stop, or stopped with a status of its own (3: a defunct GPU worker).
        return celery_status
