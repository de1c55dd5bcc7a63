"""Every error leaves the API as ``{"error": {"code", "message"}}`` with a stable code.

While Redis is down every request fails with ``503``; the log says so once per outage (ERROR),
and once when Redis answers again (INFO), not once per request: see ``redis_outage``.
"""

from __future__ import annotations

import logging
import time

import redis
from flask import Flask, Response, current_app, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ..core.errors import ServiceError
from ..core.outage import Outage
from .services import services

__all__ = ["error_response", "redis_outage", "register_error_handlers"]

_OUTAGE = "internvl_queue.redis_outage"
_PROBE_EVERY_S = 1.0  # during an outage, how often a finished request asks Redis if it is back

log = logging.getLogger(__name__)

# Codes for the errors Flask/Werkzeug raise themselves.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def redis_outage() -> Outage:
    """The app's Redis outage log: call ``failed`` instead of logging a Redis error yourself."""
    found: Outage = current_app.extensions[_OUTAGE]
    return found


def register_error_handlers(app: Flask) -> None:
    app.extensions[_OUTAGE] = outage = Outage(log, "Redis")
    last_probe = [0.0]

    @app.after_request
    def _end_of_outage(response: Response) -> Response:
        # Whether Redis is back is asked (a PING, at most once a second) only during an outage.
        now = time.monotonic()
        if outage.down and now - last_probe[0] >= _PROBE_EVERY_S:
            last_probe[0] = now
            try:
                services().store.redis.ping()
            except redis.RedisError:
                pass
            else:
                outage.answered()
        return response

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> tuple[Response, int]:
        response, status = error_response(exc.http_status, exc.code, exc.message)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="internvl-queue"'
        return response, status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            # A route may have a limit of its own (POST /v1/batches sets its request's).
            limit = request.max_content_length if has_request_context() else None
            limit = limit or app.config["MAX_CONTENT_LENGTH"]
            message = f"the request body is larger than the limit of {limit} bytes"
        response, status = error_response(status, _HTTP_CODES.get(status, "http_error"), message)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            # RFC 9110 15.5.6: a 405 names the methods the path takes.
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response, status

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError) -> tuple[Response, int]:
        # Redis restarting or unreachable: nothing the caller did; the same request later works.
        outage.failed(exc, "answering a request")
        response, status = error_response(
            503, "service_unavailable", "the job store is unavailable; try again shortly"
        )
        response.headers["Retry-After"] = "1"
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "an unexpected error occurred")
