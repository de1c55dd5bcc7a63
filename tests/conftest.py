"""Shared fixtures: a real Redis (never a mock), the tiny checkpoint, the app, a real worker.

Redis: private redis-servers started here, on free ports, for the session (one for the shared
worker, one for the other tests); or $INTERNVL_TEST_REDIS_URL if set, for both (that database is
emptied around every test). A Redis the tests did
not start or were not pointed at is never touched, whatever answers on 6379. If no redis-server
can be started, Redis tests skip locally with the reason, and fail under CI (CI=true).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from internvl_queue.api import create_app
from internvl_queue.api.dispatch import CeleryDispatcher
from internvl_queue.api.services import EXTENSION
from internvl_queue.api.waiting import WAITERS_EXTENSION
from internvl_queue.cli.redis_server import free_port, start_redis
from internvl_queue.core.settings import Settings
from internvl_queue.core.workers import WorkerInfo, WorkerRegistry
from tests.api.api_process import ApiProcess
from tests.processes import CommandProcess
from tests.receiver import Receiver
from tests.webhooks.worker_process import WebhookWorker

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _private_redis(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[str]:
    url = os.environ.get("INTERNVL_TEST_REDIS_URL")
    if url:
        yield url
        return
    try:
        server = start_redis(tmp_path_factory.mktemp(name), persistent=False)
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(f"no Redis for the tests under CI: {exc}")
        pytest.skip(f"needs Redis: redis-server could not be started ({exc})")
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis of the tests that do not use the shared worker."""
    yield from _private_redis(tmp_path_factory, "redis")


@pytest.fixture(scope="session")
def shared_worker_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shared worker's own Redis: its heartbeats and reaper passes, which go on between
    tests, cannot reach the tests that expect no worker (or lease their own jobs)."""
    yield from _private_redis(tmp_path_factory, "redis-shared-worker")


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """The test's Redis: the shared worker's if the test uses it, the other one if not."""
    uses_worker = "worker" in request.fixturenames or "_session_worker" in request.fixturenames
    name = "shared_worker_redis_url" if uses_worker else "redis_server_url"
    return str(request.getfixturevalue(name))


def flush_our_keys(client: redis.Redis) -> None:
    """Empty the test DB, except kombu's exchange bindings.

    A running worker declared its queue binding once; deleting ``_kombu.binding.*`` would make
    later publishes unroutable, so those few keys survive between tests.
    """
    keys = [k for k in client.scan_iter(count=1000) if not k.startswith(b"_kombu.binding.")]
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    flush_our_keys(client)
    yield client
    flush_our_keys(client)
    client.close()


def user_keys(client: redis.Redis) -> list[bytes]:
    """Every key a request could have left behind (jobs, images, queued messages).

    Rate-limit counters are left out: every submit counts, accepted or refused, by design; so
    are worker heartbeats (the suite's shared worker may be running).
    """
    return sorted(
        k
        for k in client.scan_iter(count=1000)
        if not k.startswith((b"_kombu.binding.", b"iq:rate:", b"iq:worker"))
    )


def _tiny_model_path(factory: pytest.TempPathFactory) -> Path:
    # Fixed, so that settings can name the model without building it (API tests need no model).
    return factory.getbasetemp() / "tiny-internvl"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from internvl_queue.testing.tiny_model import make_tiny_model

    return make_tiny_model(_tiny_model_path(tmp_path_factory), seed=0)


# The shared worker consumes a queue of its own: once started, it must not take the jobs of later
# tests that expect them to stay queued (tests that use the `worker` fixture dispatch there).
SHARED_WORKER_QUEUE = "internvl-shared-worker"


@pytest.fixture
def settings(
    request: pytest.FixtureRequest,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    uses_worker = "worker" in request.fixturenames
    return Settings(
        redis_url=redis_url,
        queue_name=SHARED_WORKER_QUEUE if uses_worker else Settings.queue_name,
        model=str(_tiny_model_path(tmp_path_factory)),
        device="cpu",
        heartbeat_interval_s=0.5,
        default_max_new_tokens=16,
        # These tests run without API keys unless they make one (tests/api/test_auth.py).
        auth="open",
    )


def close_app(app: Flask) -> None:
    """Close what ``create_app`` opened (its Redis pool, the dispatcher's broker connections), so
    that no socket is left for the garbage collector to find (a ResourceWarning, an error here)."""
    found = app.extensions[EXTENSION]
    if (waiters := app.extensions.get(WAITERS_EXTENSION)) is not None:
        waiters.close()
    found.store.redis.connection_pool.disconnect()
    if isinstance(found.dispatcher, CeleryDispatcher):
        found.dispatcher.celery.close()


@pytest.fixture
def make_app() -> Iterator[Callable[..., Flask]]:
    """``create_app``, with every app it built closed after the test."""
    apps: list[Flask] = []

    def make(*args: Any, **kwargs: Any) -> Flask:
        apps.append(create_app(*args, **kwargs))
        return apps[-1]

    yield make
    for built in apps:
        close_app(built)


@pytest.fixture
def app(settings: Settings, make_app: Callable[..., Flask]) -> Flask:
    return make_app(settings)


@pytest.fixture
def client(app: Flask):  # type: ignore[no-untyped-def]
    return app.test_client()


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass  # one line per poll would drown the test output


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """``app`` behind a real HTTP server on a free loopback port, while in the block; its URL."""
    server = make_server("127.0.0.1", free_port(), app, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def live_api(app: Flask) -> Iterator[str]:
    """The app behind a real HTTP server on a free loopback port."""
    with serving(app) as url:
        yield url


def worker_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "INTERNVL_MODEL": settings.model,
        "INTERNVL_DEVICE": settings.device,
        "INTERNVL_HEARTBEAT_S": str(settings.heartbeat_interval_s),
        "INTERNVL_DEFAULT_MAX_NEW_TOKENS": str(settings.default_max_new_tokens),
        "INTERNVL_AUTH": settings.auth,
        "INTERNVL_QUEUE": settings.queue_name,
        "LOG_LEVEL": "INFO",
    }


class WorkerProcess(CommandProcess):
    """A real ``internvl-queue worker`` subprocess."""

    def __init__(self, settings: Settings, log_path: Path, **env: str) -> None:
        self.settings = settings
        super().__init__(["worker"], {**worker_env(settings), **env}, log_path)
        self.registry = WorkerRegistry(redis.Redis.from_url(settings.redis_url))

    def info(self) -> WorkerInfo:
        for info in self.registry.ready():
            if info.pid == self.process.pid:
                return info
        raise LookupError(f"worker {self.process.pid} has no heartbeat\n{self.log()}")

    def info_after(self, moment: float, timeout: float = 10) -> WorkerInfo:
        """The first heartbeat published after ``moment`` (counters are as of then)."""
        deadline = time.monotonic() + timeout
        while (info := self.info()).last_seen <= moment:
            assert time.monotonic() < deadline, "no fresh heartbeat"
            time.sleep(0.05)
        return info

    def wait_ready(self, timeout: float = 180) -> WorkerInfo:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}\n{self.log()}")
            try:
                return self.info()
            except LookupError:
                time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout} s\n{self.log()}")

    def stop(self) -> int:
        code = self.terminate(60)
        self.close()
        self.registry.redis.close()
        return code


@pytest.fixture(scope="session")
def _session_worker_settings(shared_worker_redis_url: str, tiny_model_dir: Path) -> Settings:
    return Settings(
        redis_url=shared_worker_redis_url,
        queue_name=SHARED_WORKER_QUEUE,
        model=str(tiny_model_dir),
        device="cpu",
        heartbeat_interval_s=0.5,
        default_max_new_tokens=16,
        # These tests run without API keys unless they make one (tests/api/test_auth.py).
        auth="open",
    )


@pytest.fixture(scope="session")
def _session_worker(
    _session_worker_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(_session_worker_settings, tmp_path_factory.mktemp("logs") / "worker.log")
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def worker(_session_worker: WorkerProcess, settings: Settings) -> WorkerProcess:
    """The shared real worker, alive and heartbeating (settings match the test's)."""
    assert replace(settings) == _session_worker.settings
    _session_worker.wait_ready(timeout=10)
    return _session_worker


@pytest.fixture
def start_api(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., ApiProcess]]:
    """Starts a real ``internvl-queue api`` (gunicorn) on the test's Redis and queue, with more
    environment given as keywords, and waits until it answers; each is stopped after the test."""
    started: list[ApiProcess] = []

    def start(**env: str) -> ApiProcess:
        process = ApiProcess(
            settings.redis_url,
            tmp_path / f"api-{len(started)}.log",
            **{"INTERNVL_QUEUE": settings.queue_name, **env},
        )
        started.append(process)
        process.wait_ready()
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real local HTTP server that records the webhooks it receives."""
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def webhook_worker(settings: Settings, tmp_path: Path) -> Iterator[WebhookWorker]:
    """A real ``internvl-queue webhook-worker`` on the test's Redis, killed after the test."""
    process = WebhookWorker(settings.redis_url, tmp_path / "webhooks.log").wait_ready()
    yield process
    process.kill()
    process.close()
