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
        # and broker connections. The open-mode warning is logged once, by the arbiter.
        from ..api import create_app

        return create_app(warn_if_open=False)


def _warn_once_if_open(server: Any) -> None:
    """gunicorn's ``on_starting`` hook: runs once, in the arbiter, before any worker forks."""
    from ..api.auth import warn_if_no_key
    from ..core.apikeys import ApiKeyStore
    from ..core.redis_client import connect
    from ..core.settings import Settings

    client = connect(Settings.from_env().redis_url, max_connections=1)
    try:
        warn_if_no_key(ApiKeyStore(client))
    finally:
        client.connection_pool.disconnect()


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
            "on_starting": _warn_once_if_open,
            # gunicorn's control socket defaults to one path per user ($HOME/.gunicorn): two
            # APIs on one host would fight over it, and nothing here uses it.
            "control_socket_disable": True,
        }
    ).run()
