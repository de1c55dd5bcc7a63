"""Fixtures of the webhook tests: a receiver, real webhook workers, the store and the outbox."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from internvl_queue.core.outbox import Outbox
from internvl_queue.core.store import JobStore
from tests.webhooks.worker_process import LEASE_S, WebhookWorker


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., WebhookWorker]]:
    workers: list[WebhookWorker] = []

    def start(**env: str) -> WebhookWorker:
        worker = WebhookWorker(redis_url, tmp_path / f"webhooks-{len(workers)}.log", **env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        # Killed, not stopped: a warm shutdown takes a second, and every test starts a worker.
        if worker.process.poll() is None:
            worker.kill()
        worker.close()


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, retention_s=3600)


@pytest.fixture
def outbox(redis_client: redis.Redis) -> Outbox:
    return Outbox(redis_client, lease_s=LEASE_S, retention_s=3600)
