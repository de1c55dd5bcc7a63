"""What the client raises: one base class, the API's refusals typed by HTTP status.

    ClientError                  base of everything this package raises on purpose
    ├── ApiError                 the API answered with an error; carries ``status``, ``code``,
    │   │                        ``message`` and ``retry_after`` (seconds, or None)
    │   ├── BadRequest           400  malformed request (``invalid_json``, ``missing_image``...)
    │   ├── Unauthorized         401  missing, unknown or revoked API key
    │   ├── NotFound             404  unknown or expired job id, or another key's job
    │   ├── Conflict             409  e.g. cancel of a finished job (``job_already_finished``)
    │   ├── PayloadTooLarge      413  body or image over a limit
    │   ├── UnsupportedMediaType 415  not an image type the API takes (``unsupported_image``)
    │   ├── ValidationFailed     422  well-formed but invalid values
    │   ├── RateLimited          429  the key's submit rate limit (``rate_limited``)
    │   └── ServiceUnavailable   503  Redis down, queue full (``queue_full``)
    ├── ApiUnreachable           no answer at all: refused or dropped connections, timeouts
    ├── WaitTimeout              ``wait``/``run`` ran out before the job finished (``job``)
    └── JobFailed                ``run``: the job ended ``failed`` or ``canceled`` (``code``)

Statuses without a class of their own (405, 408, 500, ...) raise ``ApiError`` itself. The
``code`` is the API's stable machine-readable one: branch on it, not on the message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .job import Job

__all__ = [
    "ApiError",
    "ApiUnreachable",
    "BadRequest",
    "ClientError",
    "Conflict",
    "JobFailed",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationFailed",
    "WaitTimeout",
    "api_error",
]


class ClientError(Exception):
    """Base class of every error the client raises on purpose."""


class ApiError(ClientError):
    """Raised when the API answers with an error status (``{"error": {"code", "message"}}``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        json_body: bool = True,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        # False when the reply was not the API's JSON error (a proxy's HTML page, say): then
        # ``code`` is "http_error" and ``message`` quotes the start of the body.
        self.json_body = json_body
        # Whether this answered a retry (an earlier attempt of the same request got no answer,
        # or a 429/503): a cancel that finds its job canceled was then most likely its own.
        self.retried = False


class BadRequest(ApiError):
    """Raised on 400: the request could not be parsed."""


class Unauthorized(ApiError):
    """Raised on 401: the API key is missing, unknown or revoked."""


class NotFound(ApiError):
    """Raised on 404: the job id is unknown, expired, or another API key's."""


class Conflict(ApiError):
    """Raised on 409: the request conflicts with the job's state (it already finished)."""


class PayloadTooLarge(ApiError):
    """Raised on 413: the body or an image is over a limit."""


class UnsupportedMediaType(ApiError):
    """Raised on 415: an image type (or body type) the API does not take."""


class ValidationFailed(ApiError):
    """Raised on 422: the request is well-formed but a value is invalid."""


class RateLimited(ApiError):
    """Raised on 429 once retries are used up: the API key submits faster than allowed."""


class ServiceUnavailable(ApiError):
    """Raised on 503 once retries are used up: Redis is down, or the queue is full."""


class ApiUnreachable(ClientError):
    """Raised when the API does not answer (refused, reset or timed-out connections) after
    the retries; ``timed_out``: the last attempt connected but no reply came in time."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class WaitTimeout(ClientError):
    """Raised when ``wait`` or ``run`` reaches its timeout before the job finished."""

    def __init__(self, message: str, job: Job) -> None:
        super().__init__(message)
        self.job = job


class JobFailed(ClientError):
    """Raised by ``run`` when the job ended ``failed`` or ``canceled``; ``code`` and ``message``
    are the job's error (``timeout``, ``model_error``, ``canceled``...)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.code = job.error.code if job.error else "job_failed"
        self.message = job.error.message if job.error else ""
        super().__init__(f"job {job.id} {job.status} ({self.code}): {self.message}")


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationFailed,
    429: RateLimited,
    503: ServiceUnavailable,
}


def api_error(status: int, body: bytes, retry_after: float | None = None) -> ApiError:
    """The typed error for an error reply (pure: no I/O), whatever its body holds."""
    kind = _BY_STATUS.get(status, ApiError)
    error = _json_error(body)
    if error is None:
        text = body[:200].decode("utf-8", "replace")
        message = f"HTTP {status}, not a JSON error: {text!r}"
        return kind(status, "http_error", message, retry_after=retry_after, json_body=False)
    code, message = error
    return kind(status, code, message, retry_after=retry_after)


def _json_error(body: bytes) -> tuple[str, str] | None:
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return None
    error = parsed.get("error") if isinstance(parsed, Mapping) else None
    if not isinstance(error, Mapping):
        return None
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    return code, message
