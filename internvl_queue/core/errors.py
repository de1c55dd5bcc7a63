"""Errors with a stable machine-readable ``code``.

    ServiceError                 base; carries ``code``, ``message`` and an HTTP status
    ├── BadRequest               400  malformed request (bad JSON, bad base64, missing field)
    ├── Unauthorized             401  missing, unknown or revoked API key
    ├── JobNotFound              404  unknown or expired job id (or another key's job)
    ├── Conflict                 409  the job already finished
    ├── PayloadTooLarge          413  body over the byte limit, image over the pixel limit
    ├── UnsupportedMediaType     415  request or file type we do not accept
    ├── ValidationFailed         422  well-formed but invalid values
    │   ├── WebhookUrlNotAllowed 422  a webhook_url the SSRF guard refuses
    │   │   └── WebhookUrlInvalid 422  a webhook_url that could never be delivered
    │   └── ImageUrlFailed       422  an image URL that could not be fetched (image_url_*)
    ├── TooManyRequests          429  the API key's submit rate limit (with Retry-After)
    ├── ServiceUnavailable       503  Redis or the broker does not answer; the queue is full
    └── JobFailure               the reason stored on a failed job (no HTTP status of its own)
        ├── ImageDecodeError     an image stored with the job did not decode in the worker
        ├── InferenceError       the model raised while answering
        ├── GpuOutOfMemory       the job does not fit in GPU memory
        ├── PromptTooLong        the question, or the whole prompt, is too many tokens
        ├── JobTimedOut          the job passed its deadline (timeout_s)
        └── JobCanceled          the job was canceled while running (ends ``canceled``)

The API maps every ``ServiceError`` to ``{"error": {"code", "message"}}`` in one handler; an
error with ``retry_after`` also sets the ``Retry-After`` header.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Conflict",
    "GpuOutOfMemory",
    "ImageDecodeError",
    "ImageUrlFailed",
    "InferenceError",
    "JobCanceled",
    "JobFailure",
    "JobNotFound",
    "JobTimedOut",
    "PayloadTooLarge",
    "PromptTooLong",
    "ServiceError",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationFailed",
    "WebhookUrlInvalid",
    "WebhookUrlNotAllowed",
]


class ServiceError(Exception):
    """Base class: every error we raise on purpose has a stable ``code`` and a human message."""

    http_status = 500
    default_code = "internal_error"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.retry_after = retry_after  # seconds, sent as Retry-After

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BadRequest(ServiceError):
    """Raised when a request cannot be parsed: bad JSON, bad base64, a missing field."""

    http_status = 400
    default_code = "bad_request"


class Unauthorized(ServiceError):
    """Raised when a request carries no API key, or one that is unknown or revoked."""

    http_status = 401
    default_code = "unauthorized"


class JobNotFound(ServiceError):
    """Raised when a job id is unknown or its record has expired."""

    http_status = 404
    default_code = "job_not_found"


class Conflict(ServiceError):
    """Raised when a request conflicts with the current state (a job that already finished)."""

    http_status = 409
    default_code = "conflict"


class PayloadTooLarge(ServiceError):
    """Raised when a body exceeds the byte limit or an image exceeds the pixel limit."""

    http_status = 413
    default_code = "request_too_large"


class UnsupportedMediaType(ServiceError):
    """Raised when the request body or an uploaded file is of a type we do not accept."""

    http_status = 415
    default_code = "unsupported_media_type"


class ValidationFailed(ServiceError):
    """Raised when a well-formed request carries invalid values."""

    http_status = 422
    default_code = "invalid_parameter"


class WebhookUrlNotAllowed(ValidationFailed):
    """Raised when a webhook_url is not http(s) or resolves to an address the guard refuses."""

    default_code = "webhook_url_not_allowed"


class ImageUrlFailed(ValidationFailed):
    """Raised when an image URL cannot be fetched at submit: invalid, refused by the SSRF guard,
    unreachable, too slow or too large (each its own ``image_url_*`` code)."""

    default_code = "image_url_unreachable"


class TooManyRequests(ServiceError):
    """Raised when an API key submits faster than its rate limit allows."""

    http_status = 429
    default_code = "rate_limited"


class ServiceUnavailable(ServiceError):
    """Raised when Redis or the broker cannot take the job right now."""

    http_status = 503
    default_code = "service_unavailable"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: int | None = 1
    ) -> None:
        # Every 503 says when to try again (Redis failing over is back within seconds), as the
        # handler of a bare RedisError does; a caller that retries then keeps its key and job.
        super().__init__(message, code=code, retry_after=retry_after)


class JobFailure(ServiceError):
    """Base for the reasons a job ends ``failed``; stored on the job as its ``error``."""

    default_code = "job_failed"


class ImageDecodeError(JobFailure):
    """Raised when an image stored with a job does not decode in the worker."""

    default_code = "image_decode_error"


class InferenceError(JobFailure):
    """Raised when the model raises while answering a job."""

    default_code = "model_error"


class GpuOutOfMemory(JobFailure):
    """Raised when a job does not fit in GPU memory."""

    default_code = "gpu_out_of_memory"


class PromptTooLong(JobFailure):
    """Raised when a job's question, or its whole prompt with image tokens, is too long."""

    default_code = "prompt_too_long"


class JobTimedOut(JobFailure):
    """Raised when a job passes its deadline before or while it runs."""

    default_code = "timeout"


class JobCanceled(JobFailure):
    """Raised when a running job is canceled; the job ends ``canceled``, not ``failed``."""

    default_code = "canceled"


class WebhookUrlInvalid(WebhookUrlNotAllowed):
    """Raised when a webhook_url could never be delivered: control characters, whitespace,
    non-ASCII, a host or port the HTTP client cannot use."""

    default_code = "webhook_url_invalid"
