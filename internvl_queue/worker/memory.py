"""Give the C heap's free pages back to the system when the worker goes idle.

glibc's malloc keeps the memory that large, short-lived allocations free (a batch's activations
on the CPU, decoded images, tokenizer buffers) in its arenas: a worker's RSS climbs to the
largest working set it has had and drifts up with fragmentation, although nothing leaks (the
soak in benchmarks/RESULTS.md). ``malloc_trim(0)`` returns the free pages. It takes the arenas'
locks for a few milliseconds, so it runs only when the worker has just gone idle (it holds no
job), at most once every ``min_period_s``. Without glibc (musl), it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

__all__ = ["IdleHeapTrimmer"]

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class IdleHeapTrimmer:
    """Trims on the first idle heartbeat after work, then at most once every ``min_period_s``.

    ``clock`` is a monotonic clock in seconds. ``time.monotonic`` counts from boot, so no start
    value can stand for "never trimmed" (0.0 made a machine up for less than ``min_period_s``
    wait out the period before its first trim): the first trim waits for nothing. ``trim``
    defaults to glibc's ``malloc_trim`` (nothing is trimmed without glibc).
    """

    def __init__(
        self,
        min_period_s: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        trim: Callable[[int], int] | None = None,
    ) -> None:
        self.min_period_s = min_period_s
        self._clock = clock
        self._trim = trim or _malloc_trim()
        self._busy_since_trim = False
        self._last: float | None = None  # when it last trimmed; None: not yet

    def observe(self, busy: bool) -> bool:
        """Called each heartbeat with whether the worker holds jobs; trims on the first idle
        one after work (and the period). True if it trimmed."""
        if busy:
            self._busy_since_trim = True
            return False
        if not self._busy_since_trim or self._trim is None:
            return False
        now = self._clock()
        if self._last is not None and now - self._last < self.min_period_s:
            return False
        self._trim(0)
        self._busy_since_trim, self._last = False, now
        return True
