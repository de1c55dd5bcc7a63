"""The worker's INFO log of its jobs: one summary line a minute while there is work, none idle."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from internvl_queue.core.workers import WorkerInfo
from internvl_queue.worker.heartbeat import Summary


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_summary_a_minute_while_there_is_work(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="internvl_queue.worker.heartbeat")
    clock = Clock()
    start = WorkerInfo("w", 1, "m", "cpu", None, 0.0, 0.0, engine={"batched_jobs": 0})
    summary = Summary(start, every_s=60, clock=clock)

    busy = replace(start, jobs_succeeded=9000, jobs_failed=3, engine={"batched_jobs": 9003})
    clock.now += 30
    summary.maybe_log(busy)  # not a minute yet
    assert caplog.messages == []
    clock.now += 30
    summary.maybe_log(busy)
    assert caplog.messages == [
        "last 60 s: 9000 job(s) succeeded, 3 failed (150.1/s), 0 redelivery(ies) ignored; "
        "engine: {'batched_jobs': 9003}"
    ]
    clock.now += 120
    summary.maybe_log(busy)  # idle: nothing new, nothing logged
    assert len(caplog.messages) == 1
