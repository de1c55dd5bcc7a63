"""Serve the API with gunicorn: its asyncio worker reads requests, Flask runs on threads.

gunicorn's ``asgi`` worker (``api.gunicorn_worker``: with a deadline for request heads, and its
refusals in JSON) reads every connection in one event loop per process, and
``api.front.BufferingFront`` hands Flask only requests whose body is complete, on a pool of
``threads`` threads: a slow or stalled upload holds a socket, never a thread, so it cannot starve
``/healthz`` or other callers (see ``api/front.py``). On ``SIGTERM`` it stops accepting at once,
answers its long polls with their jobs as they are, and finishes the requests in hand.

``/metrics`` adds up the HTTP counters of every process: the arbiter points prometheus-client's
multiprocess mode at a directory (``PROMETHEUS_MULTIPROC_DIR``, or a fresh temporary one) and
empties it before any process starts, so that counts of an earlier run never leak in.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

__all__ = ["serve_api"]


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict[str, Any], threads: int) -> None:
        self.options = options
        self.threads = threads
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Built in each gunicorn worker process, after the fork: every process has its own Redis
        # and broker connections. The open-mode warning is logged once, by the arbiter.
        from ..api import create_app
        from ..api.batches import BATCHES_PATH
        from ..api.front import BufferingFront
        from ..api.metrics import http_metrics
        from ..core.settings import Settings

        settings = Settings.from_env()
        app = create_app(settings, warn_if_open=False)
        return BufferingFront(
            app,
            max_body_bytes=settings.max_request_bytes,
            body_limits={BATCHES_PATH: settings.max_batch_request_bytes},
            read_timeout_s=settings.request_read_timeout_s,
            threads=self.threads,
            observe=http_metrics(app).observe,
        )


def _warn_once_if_open(server: Any) -> None:
    """gunicorn's ``on_starting`` hook: runs once, in the arbiter, before any worker forks."""
    from ..api.auth import warn_if_no_key
    from ..core.apikeys import ApiKeyStore
    from ..core.redis_client import connect
    from ..core.settings import Settings

    settings = Settings.from_env()
    client = connect(settings.redis_target, max_connections=1)
    try:
        warn_if_no_key(ApiKeyStore(client), settings.auth)
    finally:
        client.connection_pool.disconnect()


# prometheus-client picks its multiprocess mode when it is first imported, by this variable:
# it must be set before anything in the arbiter imports it (the processes inherit the module).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _metrics_dir() -> Path | None:
    """Set up the multiprocess metrics directory (see the module doc); the temporary one this
    made, to remove on exit, or None when the operator named one."""
    named = os.environ.get(MULTIPROC_ENV)
    if named:
        path, made = Path(named), None
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    else:
        path = made = Path(tempfile.mkdtemp(prefix="internvl-queue-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return made


def _forget_dead_worker(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook: its counters stay counted; its live gauges go."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _remove(made: Path | None) -> None:
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)


def serve_api(host: str, port: int, *, workers: int = 2, threads: int = 8) -> None:
    from ..core.settings import Settings

    made = _metrics_dir()  # first: before anything imports prometheus-client

    read_timeout_s = Settings.from_env().request_read_timeout_s
    _Gunicorn(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            # gunicorn's asgi worker, with a deadline for request heads, JSON refusals and a quick
            # graceful stop (long polls answered at once on SIGTERM).
            "worker_class": "internvl_queue.api.gunicorn_worker.ApiWorker",
            "asgi_loop": "asyncio",
            # gunicorn's own wait for body data: past ours, so that the front answers 408 first.
            "timeout": max(60, int(read_timeout_s) + 10),
            "accesslog": "-",
            # After SIGTERM: the most the requests in hand (uploads, submits) get to finish;
            # long polls do not wait for it (api/gunicorn_worker.py).
            "graceful_timeout": 10,
            "on_starting": _warn_once_if_open,
            "child_exit": _forget_dead_worker,
            "on_exit": lambda server: _remove(made),
            # gunicorn's control socket defaults to one path per user ($HOME/.gunicorn): two
            # APIs on one host would fight over it, and nothing here uses it.
            "control_socket_disable": True,
        },
        threads,
    ).run()
