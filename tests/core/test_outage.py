"""An outage is two log lines, whatever the number of failed calls in it."""

from __future__ import annotations

import logging

import pytest
import redis

from internvl_queue.core.outage import Outage

log = logging.getLogger("tests.outage")


def test_one_line_when_it_starts_and_one_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tests.outage")
    now = [100.0]
    outage = Outage(log, "Redis", clock=lambda: now[0])
    outage.answered()  # no outage: nothing to say
    for _ in range(144):  # a poll every 0.5 s for 72 s
        outage.failed(redis.ConnectionError("Connection refused"), "polling")
        now[0] += 0.5
    assert outage.down
    outage.answered()
    outage.answered()
    assert not outage.down
    above_debug = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno > 10]
    assert above_debug == [
        (
            "ERROR",
            "Redis unreachable (polling: Connection refused); logged once until it answers again",
        ),
        ("INFO", "Redis answers again after 72.0 s (144 call(s) failed meanwhile)"),
    ]

    outage.failed(redis.ConnectionError("reset"), "storing a job")  # the next outage
    assert [r.levelname for r in caplog.records if r.levelno > 10][-1] == "ERROR"


def test_its_first_line_at_the_level_given(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tests.outage")
    Outage(log, "Redis", level=logging.WARNING).failed(OSError("down"), "listening")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
