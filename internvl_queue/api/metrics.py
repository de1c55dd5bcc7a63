"""``GET /metrics``: the service's figures in Prometheus' text format (docs/metrics.md).

Open, like ``/healthz`` and ``/readyz``, whatever ``INTERNVL_AUTH`` says: Prometheus scrapes it
without an API key, and it holds nothing a key protects. Every figure is an aggregate: counts,
durations, queue lengths, worker names, models and GPU memory (what ``/readyz`` already shows);
no question, answer, image, job id, metadata, webhook URL or key id, and its labels come from
fixed sets (route templates, statuses, error codes, worker names), never from a caller's input.
Where it must not be public, the proxy in front of the API keeps ``/metrics`` to the inside.

Two sources: this API's HTTP counters (``api/http_metrics.py``, all gunicorn processes added
up) and the cluster's state, read from Redis now (``api/cluster_metrics.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from .cluster_metrics import ClusterCollector
from .http_metrics import HttpMetrics
from .services import services

__all__ = ["http_metrics", "metrics", "register_metrics"]

metrics = Blueprint("metrics", __name__)

_EXTENSION = "internvl_queue.http_metrics"


def register_metrics(app: Flask) -> None:
    """Serve ``/metrics`` and give the app its HTTP counters (the front feeds them)."""
    app.extensions[_EXTENSION] = HttpMetrics(app)
    app.register_blueprint(metrics)


def http_metrics(app: Flask) -> HttpMetrics:
    found: HttpMetrics = app.extensions[_EXTENSION]
    return found


class _Scrape(Collector):
    def __init__(self, *sources: Collector) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()


@metrics.get("/metrics")
def scrape() -> Response:
    svc = services()
    cluster = ClusterCollector(svc.store.redis, svc.settings.queue_name)
    body = generate_latest(_Scrape(http_metrics(current_app).collector(), cluster))
    return Response(body, content_type=CONTENT_TYPE_LATEST)
