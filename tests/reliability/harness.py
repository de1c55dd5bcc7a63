"""A whole service for fault tests: its own Redis (AOF), the API behind a real HTTP server, real
GPU worker and webhook worker processes, a webhook receiver, and a client that submits a burst.

Timings are compressed through settings (heartbeat 0.5 s, lease 3 s) so that faults and their
recovery fit in a test of well under a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis
import requests

from internvl_queue.cli.redis_server import RedisServer, start_redis
from internvl_queue.core.settings import Settings
from internvl_queue.core.signing import generate_secret
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from tests.conftest import WorkerProcess, close_app, serving, worker_env
from tests.images import photo
from tests.processes import CommandProcess

__all__ = [
    "Burst",
    "Stack",
    "WebhookWorker",
    "fault_settings",
    "running_stack",
    "stack_env",
    "wait_for",
]

TERMINAL = {s.value for s in JobStatus if s.is_terminal}


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``check()`` held; fails the test after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


class WebhookWorker(CommandProcess):
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(["webhook-worker"], env, log_path)

    def wait_ready(self, timeout: float = 30) -> None:
        wait_for(lambda: "webhook worker ready" in self.log(), timeout, "the webhook worker")


@dataclass
class Stack:
    """Redis, the API, the workers a test started: see ``running_stack``."""

    redis: RedisServer
    settings: Settings
    api: str
    tmp: Path
    env: dict[str, str]
    workers: list[WorkerProcess] = field(default_factory=list)
    others: list[CommandProcess] = field(default_factory=list)
    client: redis.Redis = field(init=False)

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=5)
        self.store = JobStore.from_settings(self.client, self.settings)

    def start_worker(self, **env: str) -> WorkerProcess:
        log_path = self.tmp / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(self.settings, log_path, **{**self.env, **env})
        self.workers.append(worker)
        return worker

    def start_webhook_worker(self) -> WebhookWorker:
        webhooks = WebhookWorker({**self.env}, self.tmp / "webhooks.log")
        self.others.append(webhooks)
        return webhooks

    def close(self) -> None:
        """Kill every process still running (a test stops the ones it wants stopped itself)."""
        for process in [*self.workers, *self.others]:
            if process.process.poll() is None:
                process.kill()
            process.close()
        self.client.close()

    def jobs(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored records of ``ids`` (decoded hash fields); a missing one is left out."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(f"iq:job:{job_id}")
        found = {}
        for job_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                found[job_id] = {k.decode(): v.decode() for k, v in raw.items()}
        return found

    def unfinished(self, ids: list[str]) -> list[str]:
        return [i for i, job in self.jobs(ids).items() if job["status"] not in TERMINAL]


def stack_env(settings: Settings) -> dict[str, str]:
    return {
        **worker_env(settings),
        "INTERNVL_LEASE_S": str(settings.lease_s),
        "INTERNVL_MAX_ATTEMPTS": str(settings.max_attempts),
        "INTERNVL_WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "WEBHOOK_SECRETS": settings.webhook_secrets,
        "WEBHOOK_ALLOWED_CIDRS": settings.webhook_allowed_cidrs,
        "WEBHOOK_RETRY_SCHEDULE": settings.webhook_retry_schedule,
        "WEBHOOK_POLL_S": str(settings.webhook_poll_s),
        "WEBHOOK_TIMEOUT_S": str(settings.webhook_timeout_s),
        "INTERNVL_TEST_FAULTS": "1",
    }


def fault_settings(redis_url: str, model: str, **overrides: Any) -> Settings:
    """Settings with compressed timings (heartbeat 0.5 s, lease 3 s), signed webhooks to
    loopback receivers, and no API keys; ``overrides`` replace any of them."""
    return replace(
        Settings(
            redis_url=redis_url,
            model=model,
            device="cpu",
            heartbeat_interval_s=0.5,
            lease_s=3.0,
            default_max_new_tokens=8,
            webhook_secrets=generate_secret(),
            webhook_allowed_cidrs="127.0.0.0/8",
            webhook_retry_schedule="0.2,0.5,1,2,4,8,16,32,64",
            webhook_poll_s=0.1,
            webhook_timeout_s=2.0,
            auth="open",  # these tests are about faults, not keys
        ),
        **overrides,
    )


@contextmanager
def running_stack(tmp: Path, model: str, **overrides: Any) -> Iterator[Stack]:
    """Redis (AOF, fsync every second) in ``tmp`` and the API on it, for the block; workers are
    started by the test (``Stack.start_worker``) and killed at the end."""
    from internvl_queue.api import create_app

    with ExitStack() as stack_exit:
        server = start_redis(tmp / "redis", persistent=True)
        stack_exit.callback(server.stop)
        settings = fault_settings(server.url, model, **overrides)
        app = create_app(settings)
        stack_exit.callback(close_app, app)
        api = stack_exit.enter_context(serving(app))
        stack = Stack(server, settings, api, tmp, stack_env(settings))
        stack_exit.callback(stack.close)
        yield stack


class Burst:
    """A client thread that submits jobs as fast as the API takes them, ``every`` s apart.

    Records every accepted job (202) and counts the 503s; any other answer is a test failure.
    """

    def __init__(
        self, api: str, *, every: float = 0.05, webhook_url: str | None = None, **fields: str
    ) -> None:
        self.api, self.every, self.webhook_url, self.fields = api, every, webhook_url, fields
        self.accepted: list[str] = []
        self.unavailable = 0
        self.unexpected: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._session = requests.Session()

    def submit(self, question: str = "What is in the picture?", **fields: str) -> requests.Response:
        n = len(self.accepted)
        data = {"question": question, **self.fields, **fields}
        if self.webhook_url:
            data["webhook_url"] = self.webhook_url
        return self._session.post(
            f"{self.api}/v1/jobs",
            data=data,
            files=[("image", ("a.jpg", photo(64, 48, seed=n % 50), "image/jpeg"))],
            timeout=30,
        )

    def volley(self, count: int) -> list[str]:
        """Submit ``count`` jobs at once (from the caller's thread); their ids."""
        ids = []
        for _ in range(count):
            reply = self.submit()
            assert reply.status_code == 202, reply.text
            ids.append(reply.json()["id"])
        self.accepted.extend(ids)
        return ids

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self.submit()
            except requests.RequestException as exc:
                self.unexpected.append(f"no answer: {exc}")
                continue
            if reply.status_code == 202:
                self.accepted.append(reply.json()["id"])
            elif reply.status_code == 503 and reply.json()["error"]["code"] in (
                "service_unavailable",
            ):
                self.unavailable += 1
            else:
                self.unexpected.append(f"{reply.status_code} {reply.text[:200]}")
            self._stop.wait(self.every)

    def __enter__(self) -> Burst:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self._session.close()
