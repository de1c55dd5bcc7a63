"""The spec's part for ``/v1/batches``: its operations and schemas (api/batches.py)."""

from __future__ import annotations

from typing import Any

from ...core.batches import BATCH_EVENT_TYPES, BatchStatus
from ...core.settings import Settings

__all__ = ["batch_paths", "batch_schemas"]

Schema = dict[str, Any]

EXAMPLE_BATCH_ID = "0b7e4c2a9f1d4e3b8a6c5d4e3f2a1b0c"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_JSON = "application/json"
_JSONL = "application/jsonl"
_BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
_NULLABLE_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
_COUNT: Schema = {"type": "integer", "minimum": 0}
# A line that is not a valid BatchRequest does not refuse the batch: it is reported as that
# line's error (unless all_or_nothing). So the body takes any line; BatchRequest says what runs.
_ANY_LINE: Schema = {"description": "A BatchRequest; any other line is reported as invalid."}
# Some line that is not blank (a body of blank lines is 400 empty_batch).
_JSON_LINES: Schema = {
    "type": "string",
    "pattern": "\\S",
    "description": "One BatchRequest object per line; any other line is reported as invalid.",
}
# As a job's: not format "uri", an empty value means no webhook.
_WEBHOOK_URL: Schema = {
    "type": "string",
    "pattern": "^$|^[Hh][Tt][Tt][Pp][Ss]?://",
    "description": "An http(s) URL for the batch's own terminal event (empty: none).",
}


def _closed(properties: dict[str, Schema], description: str = "") -> Schema:
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


def batch_schemas(settings: Settings) -> dict[str, Schema]:
    line_error = _closed(
        {
            "line": {"type": "integer", "minimum": 1},
            "custom_id": {"type": ["string", "null"]},
            "code": ref("ErrorCode"),
            "message": {"type": "string"},
        },
        "Why one line did not become a job: its line (JSON Lines) or 1-based array index.",
    )
    request: Schema = {
        "allOf": [
            ref("SubmitJson"),
            {
                "type": "object",
                "required": ["custom_id"],
                "properties": {
                    "custom_id": {"type": "string", "minLength": 1, "maxLength": 256},
                },
            },
        ],
        "description": "One line: a POST /v1/jobs JSON body plus custom_id (unique in the batch). "
        "A line without priority runs in the low lane.",
    }
    return {
        "BatchStatus": {"type": "string", "enum": [s.value for s in BatchStatus]},
        "BatchLineError": line_error,
        "BatchRequest": request,
        "BatchSubmit": {
            "type": "object",
            "required": ["requests"],
            "additionalProperties": False,
            "properties": {
                "requests": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.max_batch_requests,
                    "items": _ANY_LINE,
                },
                "all_or_nothing": {
                    "type": ["boolean", "null"],
                    "description": "Refuse the whole batch (422 batch_invalid) if a line is "
                    "invalid; by default the valid lines run and the others are reported.",
                },
                "webhook_url": {**_WEBHOOK_URL, "type": ["string", "null"]},
                "metadata": {"type": ["object", "null"]},
            },
        },
        "Batch": _closed(
            {
                "id": _ID,
                "object": {"const": "batch"},
                "status": ref("BatchStatus"),
                "created_at": _TIMESTAMP,
                "started_at": _NULLABLE_TIMESTAMP,
                "finished_at": _NULLABLE_TIMESTAMP,
                "expires_at": _TIMESTAMP,
                "cancel_requested_at": _NULLABLE_TIMESTAMP,
                "counts": _closed(
                    {
                        name: _COUNT
                        for name in (
                            "total",
                            "invalid",
                            "jobs",
                            "pending",
                            "succeeded",
                            "failed",
                            "canceled",
                        )
                    },
                    "total lines = invalid + jobs; jobs = pending + succeeded + failed + "
                    "canceled (exact at every read).",
                ),
                "metadata": {"type": ["object", "null"]},
                "webhook": {
                    "oneOf": [
                        _closed(
                            {
                                "url": {"type": "string", "format": "uri"},
                                "events": {
                                    "type": "array",
                                    "items": {"enum": list(BATCH_EVENT_TYPES)},
                                },
                            }
                        ),
                        {"type": "null"},
                    ]
                },
                "errors": {"type": "array", "items": ref("BatchLineError")},
                "errors_truncated": {
                    "type": "boolean",
                    "description": "More lines were invalid than listed here; the results "
                    "stream has every one.",
                },
                "cut_short": {
                    "type": "boolean",
                    "description": "The request that submitted it died while storing its jobs "
                    "and nobody retried it with its Idempotency-Key in time: counts.jobs are the "
                    "jobs stored, which run; the other lines are `not_stored` in the results. "
                    "Submit those lines again.",
                },
                "results_url": {"type": "string"},
            },
            "A batch of jobs. Status `validating` while its jobs are being stored.",
        ),
        "BatchRefused": _closed(
            {
                "error": _closed(
                    {"code": {"const": "batch_invalid"}, "message": {"type": "string"}}
                ),
                "errors": {"type": "array", "items": ref("BatchLineError")},
            }
        ),
        "BatchResultLine": _closed(
            {
                "index": {"type": "integer", "minimum": 1},
                "custom_id": {"type": ["string", "null"]},
                "job_id": {"type": ["string", "null"]},
                "status": {
                    "enum": [
                        "queued",
                        "running",
                        "succeeded",
                        "failed",
                        "canceled",
                        "invalid",
                        "expired",
                        "not_stored",
                    ]
                },
                "result": {"oneOf": [ref("JobResult"), {"type": "null"}]},
                "error": {"type": ["object", "null"]},
            },
            "One line of GET /v1/batches/{batch_id}/results (JSON Lines).",
        ),
    }


def _error(description: str, *codes: str) -> Schema:
    listed = ", ".join(f"`{code}`" for code in codes)
    return {
        "description": f"{description} (code {listed})",
        "content": {_JSON: {"schema": ref("Error")}},
    }


_UNAUTHORIZED = {
    **_error("Missing, malformed, unknown or revoked API key", "unauthorized"),
    "headers": {"WWW-Authenticate": {"$ref": "#/components/headers/WwwAuthenticate"}},
}
_UNAVAILABLE = _error("Redis does not answer; try again", "service_unavailable")
_NOT_FOUND = _error("Unknown or expired batch id, or another API key's batch", "batch_not_found")
_BATCH_ID = {
    "name": "batch_id",
    "in": "path",
    "required": True,
    "schema": _ID,
    "example": EXAMPLE_BATCH_ID,
}
_OPTIONS = [
    {
        "name": "all_or_nothing",
        "in": "query",
        "required": False,
        "description": "For a JSON Lines or array body: refuse the batch if a line is invalid.",
        "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
    },
    {
        "name": "webhook_url",
        "in": "query",
        "required": False,
        "description": "For a JSON Lines or array body: where batch.completed (or "
        "batch.canceled, batch.failed) is sent.",
        "schema": _WEBHOOK_URL,
    },
]


def batch_paths() -> dict[str, dict[str, Any]]:
    batch = {"description": "The batch.", "content": {_JSON: {"schema": ref("Batch")}}}
    return {
        "/v1/batches": {
            "post": {
                "operationId": "submitBatch",
                "summary": "Submit a batch: up to INTERNVL_MAX_BATCH_REQUESTS jobs at once",
                "description": (
                    "Every line is validated as POST /v1/jobs validates a body; valid lines "
                    "become jobs (low priority unless a line says otherwise), invalid ones are "
                    "reported by line. The body limit is INTERNVL_MAX_BATCH_REQUEST_BYTES."
                ),
                "tags": ["batches"],
                "security": _BEARER,
                "parameters": [*_OPTIONS, {"$ref": "#/components/parameters/BatchIdempotencyKey"}],
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSONL: {"schema": _JSON_LINES},
                        "application/x-ndjson": {"schema": _JSON_LINES},
                        _JSON: {
                            "schema": {
                                "oneOf": [
                                    {"type": "array", "items": _ANY_LINE, "minItems": 1},
                                    ref("BatchSubmit"),
                                ]
                            }
                        },
                    },
                },
                "responses": {
                    "202": {
                        **batch,
                        "headers": {
                            "Idempotency-Replayed": {
                                "description": "`true` when the reply is the batch this "
                                "Idempotency-Key already created (as it is now).",
                                "schema": {"const": "true"},
                            },
                            "Location": {
                                "description": "The batch's URL.",
                                "schema": {
                                    "type": "string",
                                    "pattern": "^/v1/batches/[0-9a-f]{32}$",
                                },
                            },
                        },
                    },
                    "400": _error(
                        "The body cannot be read, or a bad Idempotency-Key",
                        "invalid_json",
                        "invalid_utf8",
                        "empty_batch",
                        "invalid_idempotency_key",
                    ),
                    "401": _UNAUTHORIZED,
                    "413": _error(
                        "The body is over INTERNVL_MAX_BATCH_REQUEST_BYTES", "request_too_large"
                    ),
                    "409": _error(
                        "The first request with this Idempotency-Key is still storing the "
                        "batch; send it again after Retry-After",
                        "batch_storing",
                    ),
                    "415": _error("Neither JSON Lines nor JSON", "unsupported_media_type"),
                    "422": {
                        "description": "all_or_nothing and some line is invalid (code "
                        "`batch_invalid`, with every line's error), or a bad option "
                        "(`invalid_parameter`, `too_many_batch_requests`, "
                        "`webhook_url_not_allowed`, `webhook_url_invalid`, "
                        "`webhooks_not_configured`, `invalid_metadata`), or an Idempotency-Key "
                        "already used for a different batch (`idempotency_key_reused`)",
                        "content": {
                            _JSON: {"schema": {"oneOf": [ref("BatchRefused"), ref("Error")]}}
                        },
                    },
                    "429": _error("The API key's submit rate limit", "rate_limited"),
                    "503": _error(
                        "Too many queued batch jobs or image bytes; Redis does not answer; the "
                        "batch was stored but too few replicas took it in time; or a retry with "
                        "the same Idempotency-Key took over storing it",
                        "queue_full",
                        "service_unavailable",
                        "not_durable",
                        "batch_taken_over",
                    ),
                },
            }
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "operationId": "getBatch",
                "summary": "Read a batch: its status and exact counts",
                "tags": ["batches"],
                "security": _BEARER,
                "parameters": [_BATCH_ID],
                "responses": {
                    "200": batch,
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/v1/batches/{batch_id}/results": {
            "get": {
                "operationId": "getBatchResults",
                "summary": "Every line's outcome so far, in input order (JSON Lines)",
                "description": (
                    "One BatchResultLine per input line, also while the batch runs: a finished "
                    "line has its result or error, a pending one is queued or running."
                ),
                "tags": ["batches"],
                "security": _BEARER,
                "parameters": [_BATCH_ID],
                "responses": {
                    "200": {
                        "description": "One BatchResultLine (JSON) per line.",
                        "content": {_JSONL: {"schema": {"type": "string"}}},
                    },
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": {
                "operationId": "cancelBatch",
                "summary": "Cancel what has not run",
                "description": (
                    "Queued jobs are canceled at once and never start; running ones are asked "
                    "to stop. 202 while some still run, 200 when the batch is canceled."
                ),
                "tags": ["batches"],
                "security": _BEARER,
                "parameters": [_BATCH_ID],
                "responses": {
                    "200": {**batch, "description": "The batch, canceled."},
                    "202": {**batch, "description": "The batch; some jobs still stopping."},
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                    "409": _error("The batch already finished", "batch_already_finished"),
                    "503": _UNAVAILABLE,
                },
            }
        },
    }
