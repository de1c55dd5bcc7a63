"""One log line when a dependency (Redis) stops answering, one when it answers again.

While Redis is down every request of the API and every poll of the webhook worker fails; logging
each failure (with a traceback) buries the log under hundreds of identical lines an outage. An
``Outage`` logs the first failure at ERROR (or the level given), the rest at DEBUG, and the end
of the outage at INFO with how long it lasted and how many calls failed meanwhile. Thread-safe:
the API's threads and a worker's threads share one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Outage"]


class Outage:
    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        level: int = logging.ERROR,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.what = what  # "Redis at host:port", say
        self.level = level  # of the outage's first line
        self.clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException, doing: str) -> None:
        """A call failed because of the outage; ``doing`` says what it was doing."""
        with self._lock:
            self._failures += 1
            if self._since is not None:
                self.log.debug("%s still unreachable (%s: %s)", self.what, doing, exc)
                return
            self._since = self.clock()
        self.log.log(
            self.level,
            "%s unreachable (%s: %s); logged once until it answers again",
            self.what,
            doing,
            exc,
        )

    def answered(self) -> None:
        """A call succeeded: the outage, if any, is over."""
        if self._since is None:  # the usual case, without the lock
            return
        with self._lock:
            if self._since is None:
                return
            lasted, failures = self.clock() - self._since, self._failures
            self._since, self._failures = None, 0
        self.log.info(
            "%s answers again after %.1f s (%d call(s) failed meanwhile)",
            self.what,
            lasted,
            failures,
        )
