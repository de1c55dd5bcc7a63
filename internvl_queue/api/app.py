"""The Flask application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from ..core.apikeys import ApiKeyStore
from ..core.idempotency import IdempotencyStore
from ..core.image_urls import ImageFetcher
from ..core.outbox import Outbox
from ..core.ratelimit import RateLimiter
from ..core.redis_client import connect
from ..core.result_cache import ResultCache
from ..core.settings import Settings
from ..core.store import JobStore
from ..core.workers import WorkerRegistry
from .auth import register_auth
from .batches import batches
from .dispatch import CeleryDispatcher, Dispatcher
from .errors import register_error_handlers
from .health import health
from .jobs import jobs
from .metrics import register_metrics
from .reference import reference
from .services import EXTENSION, Services
from .web_page import web_page

__all__ = ["create_app"]


class StrictJSONProvider(DefaultJSONProvider):
    """Every reply is strict JSON (RFC 8259): a NaN or Infinity is a bug to log, not a reply
    that strict clients cannot parse. Keys keep their order."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


def create_app(
    settings: Settings | None = None,
    *,
    dispatcher: Dispatcher | None = None,
    warn_if_open: bool = True,
) -> Flask:
    """Build the API. ``settings`` default to the environment; ``dispatcher`` to Celery.

    ``warn_if_open``: log the open-mode warning when no API key exists (a server that builds one
    app per process warns once itself instead)."""
    settings = settings or Settings.from_env()
    app = Flask("internvl_queue")
    # Werkzeug refuses larger bodies with 413 before reading them.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json = StrictJSONProvider(app)
    client = connect(settings.redis_target)
    app.extensions[EXTENSION] = Services(
        settings=settings,
        store=JobStore.from_settings(client, settings),
        workers=WorkerRegistry(client),
        dispatcher=dispatcher or CeleryDispatcher(settings),
        idempotency=IdempotencyStore(client, ttl_s=settings.idempotency_ttl_s),
        outbox=Outbox.from_settings(client, settings),
        api_keys=ApiKeyStore(client),
        rate_limiter=RateLimiter(client, settings.rate_limit_jobs, settings.rate_limit_window_s),
        result_cache=ResultCache.from_settings(client, settings),
        image_fetcher=ImageFetcher.from_settings(settings),
    )
    register_error_handlers(app)
    register_auth(app, warn_if_open=warn_if_open)
    app.register_blueprint(jobs)
    app.register_blueprint(batches)
    app.register_blueprint(health)
    app.register_blueprint(web_page)
    register_metrics(app)
    app.register_blueprint(reference)
    return app
