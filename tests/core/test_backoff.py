"""The retry schedule, jitter that only shortens, Retry-After and the window (pure)."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from internvl_queue.core.backoff import (
    JITTER_FLOOR,
    next_attempt_at,
    next_delay,
    parse_retry_after,
)

SCHEDULE = (5.0, 30.0, 120.0)


def test_the_schedule_is_followed_then_used_up() -> None:
    rng = random.Random(1)
    for attempts, base in enumerate(SCHEDULE, start=1):
        delay = next_delay(attempts, SCHEDULE, rng=rng)
        assert delay is not None and JITTER_FLOOR * base <= delay <= base
    assert next_delay(len(SCHEDULE) + 1, SCHEDULE, rng=rng) is None
    assert next_delay(0, SCHEDULE, rng=rng) is None


def test_jitter_never_lengthens_and_does_spread() -> None:
    rng = random.Random(7)
    delays = [next_delay(2, SCHEDULE, rng=rng) for _ in range(2000)]
    assert all(d is not None and 22.5 <= d <= 30.0 for d in delays)
    assert max(d for d in delays if d) - min(d for d in delays if d) > 5  # not constant


def test_retry_after_is_a_floor() -> None:
    rng = random.Random(3)
    due = next_attempt_at(1, SCHEDULE, now=1000, window_end=10_000, retry_after=60, rng=rng)
    assert due == 1060
    # A Retry-After shorter than the schedule's wait does not shorten it.
    due = next_attempt_at(2, SCHEDULE, now=1000, window_end=10_000, retry_after=1, rng=rng)
    assert due is not None and 1000 + 22.5 <= due <= 1030


def test_nothing_is_scheduled_past_the_window() -> None:
    assert next_attempt_at(1, SCHEDULE, now=1000, window_end=1100, retry_after=3600) is None
    assert next_attempt_at(3, SCHEDULE, now=1000, window_end=1050) is None
    assert next_attempt_at(1, SCHEDULE, now=1000, window_end=1100) is not None


def test_exhausted_schedule_gives_up() -> None:
    assert next_attempt_at(3 + 1, SCHEDULE, now=0, window_end=1e9) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 0 ", 0.0), ("-5", None), ("soon", None), ("", None), (None, None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1000.0) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now) == pytest.approx(90)
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now) == 0.0
