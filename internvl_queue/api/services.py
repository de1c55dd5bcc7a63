"""What the views need (settings, store, workers, dispatcher, keys, limiter, image fetcher), built
once per app."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from ..core.apikeys import ApiKeyStore
from ..core.idempotency import IdempotencyStore
from ..core.image_urls import ImageFetcher
from ..core.outbox import Outbox
from ..core.ratelimit import RateLimiter
from ..core.result_cache import ResultCache
from ..core.settings import Settings
from ..core.store import JobStore
from ..core.workers import WorkerRegistry
from .dispatch import Dispatcher

__all__ = ["EXTENSION", "Services", "services"]

EXTENSION = "internvl_queue"


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: JobStore
    workers: WorkerRegistry
    dispatcher: Dispatcher
    idempotency: IdempotencyStore
    outbox: Outbox
    api_keys: ApiKeyStore
    rate_limiter: RateLimiter
    result_cache: ResultCache
    image_fetcher: ImageFetcher


def services() -> Services:
    found: Services = current_app.extensions[EXTENSION]
    return found
