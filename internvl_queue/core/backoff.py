"""When to try a webhook event again: the retry schedule, jitter and Retry-After (pure, no I/O).

The schedule lists the seconds between attempts: the first attempt is made at once, the n-th
wait is ``schedule[n - 1]``, and once the schedule is used up the event is given up. Jitter only
ever shortens a wait (to 75..100 %), so the last attempt still falls inside the event's window
and retries of many events that failed together spread out. A receiver's ``Retry-After`` is a
floor on the wait, never a reason to keep an event past its window: its record expires then.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["JITTER_FLOOR", "next_attempt_at", "next_delay", "parse_retry_after"]

JITTER_FLOOR = 0.75  # a wait is shortened to between 75 % and 100 % of the schedule's


def next_delay(
    attempts: int, schedule: Sequence[float], *, rng: random.Random | None = None
) -> float | None:
    """Seconds to wait after ``attempts`` attempts (jittered); None when the schedule is used up."""
    if attempts < 1 or attempts > len(schedule):
        return None
    uniform = (rng or random).uniform
    return schedule[attempts - 1] * uniform(JITTER_FLOOR, 1.0)


def next_attempt_at(
    attempts: int,
    schedule: Sequence[float],
    *,
    now: float,
    window_end: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """When the next attempt is due (epoch seconds), or None to give up.

    ``retry_after`` (seconds, from the receiver) makes the wait at least that long. An attempt
    that would fall after ``window_end`` (created_at + the webhook window) is not scheduled.
    """
    delay = next_delay(attempts, schedule, rng=rng)
    if delay is None:
        return None
    if retry_after is not None:
        delay = max(delay, retry_after)
    due = now + delay
    return None if due > window_end else due


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP-date); None if bad.

    A date in the past means no wait (0); a negative or unparseable value is ignored (None).
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates: RFC 9110 dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
