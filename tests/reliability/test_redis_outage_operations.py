"""What an operator sees through Redis outages: logs, health checks, how soon work resumes.

Real processes (a GPU worker, a webhook worker, the API behind a real HTTP server) and a real
Redis stopped and started again while jobs are in flight, three times with varied outages:

- the worker logs no INFO line per job (their detail is at DEBUG);
- the webhook worker logs one line when an outage starts and one when it ends, no traceback; the
  API logs one ERROR per outage however many requests failed;
- ``healthcheck worker`` fails while the worker's Celery consumer is not connected, and the
  consumer is back (taking jobs) within a few seconds of Redis, not kombu's 30 s back-off.
"""

from __future__ import annotations

import io
import logging
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from internvl_queue.cli.healthcheck import run_healthcheck
from internvl_queue.core.workers import WorkerRegistry
from tests.receiver import Receiver
from tests.reliability.harness import Burst, running_stack, wait_for

OUTAGES_S = [3.0, 1.0, 5.0]


def _health(url: str) -> tuple[int, str]:
    out = io.StringIO()
    code = run_healthcheck("worker", url, socket.gethostname(), out)
    return code, out.getvalue().strip()


def test_redis_outages_log_once_and_the_worker_is_healthy_only_when_consuming(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="internvl_queue.api")
    hooks = Receiver().start()
    with running_stack(tmp_path, str(tiny_model_dir), heartbeat_interval_s=0.2) as stack:
        url = stack.settings.redis_url
        worker = stack.start_worker()
        webhooks = stack.start_webhook_worker()
        pid = worker.wait_ready().pid
        webhooks.wait_ready()
        registry = WorkerRegistry(redis.Redis.from_url(url, socket_timeout=2))

        def consuming() -> bool | None:
            return next(w.consuming for w in registry.live(forget=False) if w.pid == pid)

        wait_for(lambda: consuming() is True, 30, "the worker's consumer")
        assert _health(url)[0] == 0

        reconnects: list[float] = []
        seen_unhealthy: list[str] = []
        with Burst(stack.api, every=0.05, webhook_url=hooks.url, max_new_tokens="4") as burst:
            for outage in OUTAGES_S:
                time.sleep(1.0)
                assert stack.unfinished(burst.volley(6)), "nothing in flight at the fault"
                failed_before = burst.unavailable
                stack.redis.stop()
                time.sleep(outage)
                assert burst.unavailable > failed_before + 2, "the API was not asked meanwhile"
                stack.redis.restart()
                back = time.monotonic()
                # Until the consumer reconnects, the heartbeat says so and the check fails.
                while (state := _consuming_or_none(consuming)) is not True:
                    if state is False:
                        code, why = _health(url)
                        if code == 1:
                            seen_unhealthy.append(why)
                    assert time.monotonic() - back < 30, "the consumer did not reconnect"
                    time.sleep(0.02)
                reconnects.append(time.monotonic() - back)
                assert _health(url)[0] == 0
                assert worker.process.poll() is None and webhooks.process.poll() is None
        accepted = burst.accepted
        wait_for(lambda: not stack.unfinished(accepted), 60, "every accepted job to finish")
        statuses = [j["status"] for j in stack.jobs(accepted).values()]
        assert statuses.count("succeeded") == len(accepted)

        # A job's own lines are at DEBUG: no INFO line names one (an outage's warnings may).
        ids = set(accepted)
        lines = worker.log_path.read_text().splitlines()
        info_lines = [line for line in lines if re.search(r"\bINFO\b", line)]
        named = [line for line in info_lines if any(word in ids for word in _words(line))]
        assert info_lines and not named, named[:5]

        webhook_log = webhooks.log_path.read_text()
        assert "Traceback" not in webhook_log, webhook_log[-3000:]
        starts = webhook_log.count("Redis unreachable (")
        ends = webhook_log.count("Redis answers again after")
        assert starts == ends == len(OUTAGES_S), webhook_log[-3000:]

        api_errors = [
            r
            for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.startswith("internvl_queue.api")
        ]
        assert [r.getMessage()[:17] for r in api_errors] == ["Redis unreachable"] * len(
            OUTAGES_S
        ), [r.getMessage() for r in api_errors]
        assert burst.unavailable > 3 * len(OUTAGES_S)  # many failed requests, one line each outage
        assert all("broker consumer is not connected" in why for why in seen_unhealthy)
        print(
            f"\nRedis outages {OUTAGES_S} s: consumer back {[round(r, 2) for r in reconnects]} s "
            f"after Redis; health check said unhealthy {len(seen_unhealthy)} time(s) meanwhile; "
            f"{len(accepted)} jobs, all succeeded; {burst.unavailable} submits got 503, "
            f"API logged {len(api_errors)} ERROR line(s)"
        )
        # kombu's own schedule took up to 30 s; ours retries every 1-2 s (slack for the load).
        assert max(reconnects) < 6, reconnects
        assert seen_unhealthy, "never saw the consumer disconnected after a restart"
    hooks.stop()


def _consuming_or_none(read: Callable[[], bool | None]) -> bool | None:
    """The flag, or None while Redis cannot be read yet."""
    try:
        return read()
    except (redis.RedisError, StopIteration):
        return None


def _words(line: str) -> list[str]:
    return re.split(r"[^0-9A-Za-z_-]+", line)
