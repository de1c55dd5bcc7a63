"""The stable ``code`` values of the API's errors and of failed jobs, as the spec lists them.

Kept by hand beside the code that raises them; ``tests/api/test_openapi_spec.py`` reads the
package's sources for every code and fails when one is missing here or one here is no longer
raised, so this list cannot drift from the code.
"""

from __future__ import annotations

__all__ = ["ERROR_CODES", "JOB_ERROR_CODES"]

# ``{"error": {"code": ...}}`` of a refused request, with the statuses it comes with.
ERROR_CODES: dict[str, str] = {
    "bad_request": "400: a request the HTTP layer cannot read (bad multipart, bad HTTP)",
    "invalid_json": "400: not strict JSON (NaN/Infinity, too deep), not an object, bad images list",
    "invalid_base64": "400: an image in a JSON body that is not base64",
    "invalid_utf8": "400: a text field or JSON body that is not UTF-8",
    "invalid_metadata": "400/422: metadata that is not a strict JSON object of at most 4 KB",
    "invalid_idempotency_key": "400: an Idempotency-Key that is not 1..255 visible ASCII chars",
    "missing_image": "400: no image sent",
    "missing_question": "400: no question sent",
    "question_too_long": "400: a question over the character or byte limit",
    "invalid_cursor": "400: a cursor GET /v1/jobs did not give out (pass next_cursor unchanged)",
    "unauthorized": "401: a missing, malformed, unknown or revoked API key",
    "websocket_not_supported": "403: a WebSocket handshake",
    "not_found": "404: no such path",
    "job_not_found": "404: an unknown or expired job id, or another API key's job",
    "method_not_allowed": "405: a method the path does not take",
    "request_timeout": "408: the request head or body paused too long",
    "conflict": "409: a request that conflicts with the current state",
    "job_already_finished": "409: cancel of a job that already finished",
    "request_too_large": "413: a body over INTERNVL_MAX_REQUEST_BYTES",
    "image_too_large": "413: an image, or a request's images, over the pixel limits",
    "too_many_parts": "413: a multipart body of more than 1000 parts",
    "request_line_too_long": "414: a request line over the HTTP layer's limit",
    "unsupported_media_type": "415: a body neither multipart/form-data nor application/json",
    "unsupported_image": "415: a file that is not JPEG, PNG, WebP, GIF, BMP or TIFF",
    "invalid_parameter": "422: a value out of range or of the wrong type",
    "invalid_question": "422: an empty question, or one with no visible character",
    "too_many_images": "422: more images than INTERNVL_MAX_IMAGES",
    "empty_image": "422: an empty image file",
    "corrupt_image": "422: a damaged or truncated image",
    "webhook_url_not_allowed": "422: a webhook_url the SSRF guard refuses",
    "webhook_url_invalid": "422: a webhook_url that could never be delivered",
    "webhooks_not_configured": "422: a webhook_url while WEBHOOK_SECRETS is not set",
    "idempotency_key_reused": "422: an Idempotency-Key already used for a different request",
    "image_url_invalid": "422: an image URL that is not an http(s) URL we can fetch",
    "image_url_not_allowed": "422: an image URL (or a redirect) to an address the guard refuses",
    "image_url_unreachable": "422: an image URL that does not resolve, connect or answer 2xx",
    "image_url_timeout": "422: image URLs not fetched within INTERNVL_IMAGE_FETCH_TIMEOUT_S",
    "image_url_too_large": "422: an image URL's bytes over what INTERNVL_MAX_REQUEST_BYTES leaves",
    "rate_limited": "429: the API key's submit rate limit (see Retry-After)",
    "priority_quota_exceeded": "429: the API key already has INTERNVL_MAX_HIGH_PER_KEY high jobs "
    "queued or running",
    "request_headers_too_large": "431: request headers over the HTTP layer's limits",
    "http_error": "4xx: another refusal of the HTTP layer",
    "internal_error": "500: a bug on the service's side (logged with its traceback)",
    "not_implemented": "501: a part of HTTP/1.1 the server does not implement",
    "service_unavailable": "503: Redis or the broker does not answer (see Retry-After)",
    "queue_full": "503: too many queued jobs or queued image bytes (see Retry-After)",
    "not_durable": "503: the job was stored, but too few Redis replicas "
    "(INTERNVL_REDIS_MIN_REPLICAS) took it in time; it is kept: retry with the same "
    "Idempotency-Key (see Retry-After)",
    "image_fetch_busy": "503: this API process fetches as many image URLs as it may (Retry-After)",
    "empty_batch": "400: a batch without a request",
    "batch_invalid": "422: all_or_nothing, and some line of the batch is invalid",
    "too_many_batch_requests": "422: a batch of more than INTERNVL_MAX_BATCH_REQUESTS lines",
    "invalid_custom_id": "422 (a batch line): custom_id missing, not a string, or too long",
    "duplicate_custom_id": "422 (a batch line): a custom_id used by an earlier line",
    "batch_not_found": "404: an unknown or expired batch id, or another API key's batch",
    "batch_already_finished": "409: cancel of a batch that already finished",
    "batch_storing": "409: a batch's Idempotency-Key, while its first request is still storing "
    "the batch (see Retry-After)",
    "batch_taken_over": "503: storing a batch stalled past its lease, and a retry with the same "
    "Idempotency-Key took it over (follow the batch)",
}

# ``error.code`` of a job that ended ``failed`` or ``canceled``.
JOB_ERROR_CODES: dict[str, str] = {
    "expired": "(batch results) the job's record expired before the batch's",
    "batch_cut_short": "(batch results) a line whose job was never stored: the batch's request "
    "died storing it and was not retried with its key (submit the line again)",
    "timeout": "the job passed its deadline (timeout_s), queued or running",
    "model_error": "the model raised while answering",
    "gpu_out_of_memory": "the job does not fit in GPU memory, even alone",
    "prompt_too_long": "the question, or the whole prompt with image tokens, is too many tokens",
    "image_decode_error": "an image did not decode in the worker",
    "too_many_attempts": "the job's message was delivered too often (its workers kept dying)",
    "internal_error": "a bug in the worker (logged with its traceback)",
    "job_failed": "another failure of the job",
    "canceled": "the job was canceled (before or while it ran)",
}
