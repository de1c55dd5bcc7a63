"""HTTP request counters of one API process, summed over gunicorn's processes at scrape time.

Each request is counted by the front (``api/front.py``) once its reply is sent, with the status
the client got (a long poll's is known only then) and the route's template (``/v1/jobs/<job_id>``,
never the raw path: one series per job id would grow without bound, and ids are not for
everyone's eyes). Requests the front refuses before Flask sees them (413, 408) count under
their route too.

Under ``internvl-queue api`` prometheus-client runs in its multiprocess mode: every process
writes its counters to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` (set, and emptied, by
the gunicorn arbiter before it forks: ``cli/serve_api.py``), and whichever process answers
``/metrics`` adds up all of them, those of processes that have exited included. Elsewhere (one
process: tests, Flask's own server) the counters live in the app's own registry.
"""

from __future__ import annotations

import os

from flask import Flask
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

__all__ = ["MULTIPROC_ENV", "UNMATCHED", "HttpMetrics"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# A route label for a path that matches no route (a 404, or any path a scanner tries).
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class HttpMetrics:
    """The request counters of one app (see the module doc)."""

    def __init__(self, app: Flask) -> None:
        self._adapter = app.url_map.bind("localhost")
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "internvl_queue_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "internvl_queue_http_request_duration_seconds",
            "Time from a request's arrival to its reply (a long poll's wait included)",
            ["method", "route"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"
        route = self.route(method, path)
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)

    def route(self, method: str, path: str) -> str:
        """The template of the route ``path`` matches (under any method), or ``unmatched``."""
        try:
            try:
                rule, _ = self._adapter.match(path, method, return_rule=True)
            except MethodNotAllowed as wrong:  # a 405 still names its route
                allowed = sorted(wrong.valid_methods or ())
                rule, _ = self._adapter.match(path, allowed[0], return_rule=True)
        except (NotFound, MethodNotAllowed, RequestRedirect, IndexError, TypeError):
            return UNMATCHED
        return str(rule.rule)

    def collector(self) -> Collector:
        """What ``/metrics`` reads the counters from: every gunicorn process's, added up, in
        multiprocess mode; this process's own otherwise."""
        if os.environ.get(MULTIPROC_ENV):
            return MultiProcessCollector(None)
        return self.registry
