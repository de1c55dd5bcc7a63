"""Serve the API with gunicorn (threaded workers), the production WSGI server."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

__all__ = ["serve_api"]


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Built in each gunicorn worker process, after the fork: every process has its own Redis
        # and broker connections.
        from ..api import create_app

        return create_app()


def serve_api(host: str, port: int, *, workers: int = 2, threads: int = 8) -> None:
    _Gunicorn(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": "gthread",
            "threads": threads,
            "timeout": 60,
            "accesslog": "-",
            "graceful_timeout": 10,
        }
    ).run()
