"""A real ``internvl-queue webhook-worker`` subprocess for the webhook tests, with test timings."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from internvl_queue.core.signing import generate_secret
from tests.processes import CommandProcess
from tests.receiver import wait_until as _wait_until

__all__ = ["LEASE_S", "NEW_SECRET", "OLD_SECRET", "SCHEDULE", "WebhookWorker", "wait_until"]

SCHEDULE = "0.2,0.2,0.2,0.5,0.5"  # 6 attempts over about 1.6 s
LEASE_S = 7  # 2 * WEBHOOK_TIMEOUT_S + 5
OLD_SECRET, NEW_SECRET = generate_secret(), generate_secret()


class WebhookWorker(CommandProcess):
    """A real ``internvl-queue webhook-worker`` subprocess."""

    def __init__(self, redis_url: str, log_path: Path, **env: str) -> None:
        full = {
            **os.environ,
            "REDIS_URL": redis_url,
            "WEBHOOK_SECRETS": f"{NEW_SECRET},{OLD_SECRET}",
            "WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8",
            "WEBHOOK_RETRY_SCHEDULE": SCHEDULE,
            "WEBHOOK_POLL_S": "0.05",
            "WEBHOOK_TIMEOUT_S": "1",
            "INTERNVL_JOB_RETENTION_S": "7200",
            "LOG_LEVEL": "INFO",
            **env,
        }
        super().__init__(["webhook-worker"], {k: v for k, v in full.items() if v != ""}, log_path)

    def wait_ready(self, timeout: float = 20) -> WebhookWorker:
        wait_until(lambda: "webhook worker ready" in self.log(), timeout, "worker ready", self)
        return self

    def stop(self) -> int:
        return self.terminate(20)


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, worker: WebhookWorker | None = None
) -> None:
    """Wait for ``check``; on a timeout the failure shows the worker's log."""
    _wait_until(check, timeout, what, worker.log() if worker else "")
