"""The spec's ``paths``: every route of the API, each status it answers with and why."""

from __future__ import annotations

from typing import Any

from .batch_spec import batch_paths
from .schemas import EXAMPLE_IMAGE_BASE64, ref

__all__ = ["paths"]

Operation = dict[str, Any]

_JSON = "application/json"
Security = list[dict[str, list[str]]]
_BEARER: Security = [{"bearerAuth": []}]
_PUBLIC: Security = []  # no key, whatever INTERNVL_AUTH says


def paths() -> dict[str, dict[str, Operation]]:
    return {
        "/v1/jobs": {"post": _submit(), "get": _list()},
        "/v1/jobs/{job_id}": {"get": _read()},
        "/v1/jobs/{job_id}/cancel": {"post": _cancel()},
        "/v1/jobs/{job_id}/deliveries": {"get": _deliveries()},
        **batch_paths(),
        "/healthz": {"get": _healthz()},
        "/readyz": {"get": _readyz()},
        "/openapi.json": {"get": _openapi()},
        "/docs": {"get": _docs()},
        "/": {"get": _web_page()},
        "/metrics": {"get": _metrics()},
    }


def _json(schema: dict[str, Any], description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {_JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _header(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/headers/{name}"}


def _error(description: str, *codes: str, retry_after: bool = False) -> dict[str, Any]:
    listed = ", ".join(f"`{code}`" for code in codes)
    headers = {"Retry-After": _header("RetryAfter")} if retry_after else {}
    response = _json(ref("Error"), f"{description} (code {listed})", **headers)
    first = codes[0]
    response["content"][_JSON]["example"] = {"error": {"code": first, "message": "..."}}
    return response


_UNAUTHORIZED = {
    **_error("Missing, malformed, unknown or revoked API key", "unauthorized"),
    "headers": {"WWW-Authenticate": _header("WwwAuthenticate")},
}
_UNAVAILABLE = _error("Redis does not answer; try again", "service_unavailable", retry_after=True)
_NOT_FOUND = _error(
    "Unknown or expired job id, or another API key's job (ids cannot be probed)",
    "job_not_found",
)


# What a client does next with the job it submitted (the stateful contract test follows them).
_JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
    for name, operation in (
        ("GetJob", "getJob"),
        ("CancelJob", "cancelJob"),
        ("GetJobDeliveries", "getJobDeliveries"),
    )
}


def _linked(response: dict[str, Any]) -> dict[str, Any]:
    return {**response, "links": _JOB_LINKS}


def _submit() -> Operation:
    job_headers = {"Location": _header("Location")}
    return {
        "operationId": "submitJob",
        "summary": "Submit a job: one or more images and a question",
        "description": (
            'Images come inline (files, base64) or by URL (`{"url": ...}`, `image_url` '
            "fields), fetched by the API before it answers: a URL that cannot be fetched as an "
            "image is refused with 422 (`image_url_*`). "
            "Queues the job and answers 202 with it; a worker answers it. Poll "
            "GET /v1/jobs/{job_id} (long poll with ?wait=), ask to wait here with "
            "`Prefer: wait=N`, or name a webhook_url. A refused submit queues nothing and binds "
            "no Idempotency-Key."
        ),
        "tags": ["jobs"],
        "security": _BEARER,
        "parameters": [
            {"$ref": "#/components/parameters/IdempotencyKey"},
            {"$ref": "#/components/parameters/Prefer"},
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": ref("SubmitForm"),
                    "encoding": {
                        "image": {"contentType": "image/*"},
                        "metadata": {"contentType": "application/json"},
                    },
                },
                _JSON: {
                    "schema": ref("SubmitJson"),
                    "examples": {
                        "one image": {
                            "value": {
                                "question": "What animal is this?",
                                "images": [{"data": EXAMPLE_IMAGE_BASE64}],
                                "max_new_tokens": 8,
                            }
                        },
                        "data URL, metadata": {
                            "value": {
                                "question": "Read the text.",
                                "images": [
                                    {"data": f"data:image/png;base64,{EXAMPLE_IMAGE_BASE64}"}
                                ],
                                "max_new_tokens": 4,
                                "max_tiles": 1,
                                "timeout_s": 120,
                                "metadata": {"ref": "abc-1"},
                            }
                        },
                    },
                },
            },
        },
        "responses": {
            "200": _linked(
                _json(
                    ref("Job"),
                    "`Prefer: wait=N` and the job finished within N seconds: the finished job.",
                    **job_headers,
                    **{"Preference-Applied": _header("PreferenceApplied")},
                )
            ),
            "202": _linked(
                _json(
                    ref("Job"),
                    "Accepted: the job, queued (for a replayed Idempotency-Key: as it is now; "
                    "after a `Prefer: wait` that ran out: as it is then). Retry-After is set "
                    "when the wait was cut short (this API process holds as many long polls as "
                    "it may, or is stopping).",
                    **job_headers,
                    **{
                        "Idempotency-Replayed": _header("IdempotencyReplayed"),
                        "Preference-Applied": _header("PreferenceApplied"),
                        "Retry-After": _header("RetryAfter"),
                    },
                )
            ),
            "400": _error(
                "Malformed request",
                "invalid_json",
                "invalid_base64",
                "invalid_utf8",
                "invalid_metadata",
                "invalid_idempotency_key",
                "missing_image",
                "missing_question",
                "question_too_long",
                "bad_request",
            ),
            "401": _UNAUTHORIZED,
            "408": _error(
                "The request body paused too long; the connection is closed", "request_timeout"
            ),
            "413": _error(
                "Body over INTERNVL_MAX_REQUEST_BYTES, image(s) over the pixel limits, or more "
                "than 1000 multipart parts",
                "request_too_large",
                "image_too_large",
                "too_many_parts",
            ),
            "415": _error(
                "Not multipart/form-data or application/json, or a file that is not an image "
                "in an accepted format",
                "unsupported_media_type",
                "unsupported_image",
            ),
            "422": _error(
                "Well-formed but invalid values",
                "invalid_parameter",
                "invalid_question",
                "invalid_metadata",
                "too_many_images",
                "empty_image",
                "corrupt_image",
                "webhook_url_not_allowed",
                "webhook_url_invalid",
                "webhooks_not_configured",
                "idempotency_key_reused",
                "image_url_invalid",
                "image_url_not_allowed",
                "image_url_unreachable",
                "image_url_timeout",
                "image_url_too_large",
            ),
            "429": _error(
                "The API key's submit rate limit (Retry-After says when the window ends), or "
                "its quota of high-priority jobs queued or running",
                "rate_limited",
                "priority_quota_exceeded",
                retry_after=True,
            ),
            "503": _error(
                "Queue full (jobs or image bytes), Redis/the broker does not answer, or this "
                "API process is fetching as many image URLs as it may",
                "queue_full",
                "service_unavailable",
                "image_fetch_busy",
                retry_after=True,
            ),
        },
    }


def _list() -> Operation:
    return {
        "operationId": "listJobs",
        "summary": "List your jobs, newest first",
        "description": (
            "The calling API key's own jobs (while the API runs open: the jobs submitted "
            "without a key), newest first, each as GET /v1/jobs/{job_id} shows it, until they "
            "expire. Follow `next_cursor` (with the same filters) until it is null: the walk "
            "lists every job that existed when it began exactly once, whatever is submitted "
            "meanwhile. A page looks at a bounded number of jobs, so with a filter it may hold "
            "fewer than `limit` jobs, or none, while `next_cursor` is still set."
        ),
        "tags": ["jobs"],
        "security": _BEARER,
        "parameters": [
            {"$ref": "#/components/parameters/Status"},
            {"$ref": "#/components/parameters/CreatedAfter"},
            {"$ref": "#/components/parameters/Limit"},
            {"$ref": "#/components/parameters/Cursor"},
        ],
        "responses": {
            "200": _json(ref("JobList"), "A page of jobs, and where the next one starts."),
            "400": _error("A cursor this API did not give out", "invalid_cursor"),
            "401": _UNAUTHORIZED,
            "422": _error(
                "limit, status or created_after out of range or unreadable", "invalid_parameter"
            ),
            "503": _UNAVAILABLE,
        },
    }


def _read() -> Operation:
    return {
        "operationId": "getJob",
        "summary": "Read a job (optionally waiting for it to finish)",
        "tags": ["jobs"],
        "security": _BEARER,
        "parameters": [
            {"$ref": "#/components/parameters/JobId"},
            {"$ref": "#/components/parameters/Wait"},
        ],
        "responses": {
            "200": _json(
                ref("Job"),
                "The job. After ?wait= it is finished, or as it was when the wait ended; with "
                "Retry-After set the wait was cut short: poll again after that many seconds.",
                **{"Retry-After": _header("RetryAfter")},
            ),
            "401": _UNAUTHORIZED,
            "404": _NOT_FOUND,
            "422": _error("wait out of range (0..60) or not a number", "invalid_parameter"),
            "503": _UNAVAILABLE,
        },
    }


def _cancel() -> Operation:
    return {
        "operationId": "cancelJob",
        "summary": "Cancel a job",
        "description": (
            "A queued job is canceled at once (200) and never runs; a running one is stopped by "
            "its worker between decode steps (202, cancel_requested_at set) and ends canceled."
        ),
        "tags": ["jobs"],
        "security": _BEARER,
        "parameters": [{"$ref": "#/components/parameters/JobId"}],
        "responses": {
            "200": _json(ref("Job"), "The job was queued: it is canceled."),
            "202": _json(ref("Job"), "The job is running: its worker stops it."),
            "401": _UNAUTHORIZED,
            "404": _NOT_FOUND,
            "409": _error("The job already finished", "job_already_finished"),
            "503": _UNAVAILABLE,
        },
    }


def _deliveries() -> Operation:
    return {
        "operationId": "getJobDeliveries",
        "summary": "The job's webhook attempts, oldest first",
        "tags": ["jobs"],
        "security": _BEARER,
        "parameters": [{"$ref": "#/components/parameters/JobId"}],
        "responses": {
            "200": _json(ref("Deliveries"), "Every attempt so far (none: an empty list)."),
            "401": _UNAUTHORIZED,
            "404": _NOT_FOUND,
            "503": _UNAVAILABLE,
        },
    }


def _healthz() -> Operation:
    return {
        "operationId": "healthz",
        "summary": "Liveness: the API process answers",
        "tags": ["operations"],
        "security": _PUBLIC,
        "responses": {"200": _json(ref("Health"), "The process answers.")},
    }


def _readyz() -> Operation:
    return {
        "operationId": "readyz",
        "summary": "Readiness: Redis answers and a worker of this API's queue is ready",
        "tags": ["operations"],
        "security": _PUBLIC,
        "responses": {
            "200": _json(ref("Readiness"), "Ready."),
            "503": _json(ref("Readiness"), "Not ready; `message` says why."),
        },
    }


def _openapi() -> Operation:
    return {
        "operationId": "openapi",
        "summary": "This document (OpenAPI 3.1)",
        "tags": ["reference"],
        "security": _PUBLIC,
        "responses": {
            "200": _json({"type": "object"}, "The OpenAPI document, with this service's limits.")
        },
    }


def _text(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _docs() -> Operation:
    return {
        "operationId": "docs",
        "summary": "This document as a page to read",
        "tags": ["reference"],
        "security": _PUBLIC,
        "responses": {"200": _text("text/html", "An HTML rendering of /openapi.json.")},
    }


def _web_page() -> Operation:
    return {
        "operationId": "webPage",
        "summary": "The web page: drop images, ask a question, watch the answer arrive",
        "tags": ["web"],
        "security": _PUBLIC,
        "responses": {"200": _text("text/html", "The page (plain HTML, JS and CSS).")},
    }


def _metrics() -> Operation:
    return {
        "operationId": "metrics",
        "summary": "Prometheus metrics",
        "tags": ["operations"],
        "security": _PUBLIC,
        "responses": {
            "200": _text("text/plain", "Prometheus text exposition format (version 0.0.4).")
        },
    }
