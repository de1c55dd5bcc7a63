"""The spec's ``components``: the objects the API sends and takes, as JSON Schema 2020-12.

Limits come from the running service's ``Settings`` (an operator may lower ``max_images`` or
raise ``max_timeout_s``), so ``/openapi.json`` states the limits this deployment enforces.
"""

from __future__ import annotations

from typing import Any

from ...core.idempotency import MAX_KEY_CHARS
from ...core.image_urls import MAX_REDIRECTS
from ...core.job_listing import DEFAULT_LIMIT, LATEST_TIMESTAMP, MAX_LIMIT
from ...core.outbox import DeliveryOutcome
from ...core.priority import Priority
from ...core.settings import Settings
from ...core.status import JobStatus
from ...core.submission import MAX_METADATA_BYTES
from ...core.webhook_events import DEFAULT_EVENTS, EVENT_TYPES
from ...core.webhook_url import MAX_URL_CHARS
from ...core.workers import WorkerState
from ..waiting import MAX_WAIT_S
from .batch_spec import batch_schemas
from .codes import ERROR_CODES, JOB_ERROR_CODES

__all__ = ["EXAMPLE_IMAGE_BASE64", "EXAMPLE_JOB_ID", "components", "ref"]

Schema = dict[str, Any]

EXAMPLE_JOB_ID = "6f1c2a9d0b3e4f5a8c7d6e5f4a3b2c1d"
# An 8x8 orange PNG: the JSON examples are real requests (the contract test sends them).
EXAMPLE_IMAGE_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8UaHBgA0wYRUdtBIAHicBeAYWg8oAAAAA"
    "SUVORK5CYII="
)
_JOB_ID_PATTERN = "^[0-9a-f]{32}$"
# Padded base64 of at least one byte (what the API decodes, with validate=True), optionally as
# a data: URL.
_BASE64_IMAGE = (
    "^(data:[^,]*;base64,)?([A-Za-z0-9+/]{4})*"
    "([A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)$"
)
# What the API writes for a moment: ISO 8601 in UTC with milliseconds.
_TIMESTAMP: Schema = {
    "type": "string",
    "format": "date-time",
    "example": "2026-11-24T14:00:00.123Z",
}
_NULLABLE_TIMESTAMP: Schema = {**_TIMESTAMP, "type": ["string", "null"]}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def components(settings: Settings) -> Schema:
    return {
        "schemas": {
            "JobStatus": {
                "type": "string",
                "enum": [s.value for s in JobStatus],
                "description": "queued -> running -> succeeded, failed or canceled (terminal).",
            },
            "ErrorCode": _enum_of(ERROR_CODES, "The stable code of a refused request."),
            "JobErrorCode": _enum_of(JOB_ERROR_CODES, "Why a job ended failed or canceled."),
            "Error": _error(),
            "JobParams": _job_params(),
            "Job": _job(),
            "JobList": _job_list(),
            "JobResult": _job_result(),
            "JobError": _object(
                {"code": ref("JobErrorCode"), "message": {"type": "string"}},
                description="Why the job failed or was canceled.",
            ),
            "Webhook": _object(
                {
                    "url": {"type": "string", "format": "uri"},
                    "events": {"type": "array", "items": ref("WebhookEventType")},
                },
                description="Where the job's signed events go (Standard Webhooks v1).",
            ),
            "WebhookEventType": {"type": "string", "enum": list(EVENT_TYPES)},
            "Deliveries": _object(
                {
                    "job_id": {"type": "string", "pattern": _JOB_ID_PATTERN},
                    "webhook": {"oneOf": [ref("Webhook"), {"type": "null"}]},
                    "deliveries": {"type": "array", "items": ref("Delivery")},
                }
            ),
            "Delivery": _delivery(),
            "SubmitJson": _submit_json(settings),
            "SubmitForm": _submit_form(settings),
            "Health": _object({"status": {"const": "ok"}}),
            "Readiness": _readiness(),
            "Worker": _worker(),
            **batch_schemas(settings),
        },
        "parameters": {
            "JobId": {
                "name": "job_id",
                "in": "path",
                "required": True,
                "description": "The job's id, as returned by POST /v1/jobs (32 hex characters).",
                "schema": {"type": "string", "pattern": _JOB_ID_PATTERN},
                "example": EXAMPLE_JOB_ID,
            },
            "Wait": {
                "name": "wait",
                "in": "query",
                "required": False,
                "description": (
                    "Long poll: answer as soon as the job is finished, or with its current state "
                    f"after this many seconds (0 to {MAX_WAIT_S:g}; 0 or absent: at once)."
                ),
                "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
                "example": 30,
            },
            **_listing_parameters(),
            "BatchIdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    "Makes a retry of a batch safe: the same key with the same request (body and "
                    "query string, byte for byte) answers the batch it created (202, "
                    "Idempotency-Replayed: true); a retry of a request that died while storing "
                    "the batch stores the rest of its jobs. With a different request, 422 "
                    "idempotency_key_reused. Scoped to the API key and to batches (a job's key "
                    "may be the same), kept INTERNVL_IDEMPOTENCY_TTL_S (24 h)."
                ),
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_KEY_CHARS,
                    "pattern": "^[!-~]+$",
                },
                "example": "nightly-2026-12-05",
            },
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    "Makes a retry safe: the same key with the same request answers the original "
                    "job (202, Idempotency-Replayed: true) instead of creating another; with a "
                    "different request, 422 idempotency_key_reused. Scoped to the API key, kept "
                    "INTERNVL_IDEMPOTENCY_TTL_S (24 h)."
                ),
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_KEY_CHARS,
                    "pattern": "^[!-~]+$",
                },
                "example": "receipt-abc-1",
            },
            "Prefer": {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "description": (
                    "RFC 7240. `wait=N`: answer 200 with the finished job if it finishes within N "
                    f"seconds (capped at {MAX_WAIT_S:g}), else the usual 202. `respond-async`: the "
                    "202 at once, whatever wait says. A hint: an unreadable preference is ignored."
                ),
                "schema": {"type": "string"},
                "example": "wait=30",
            },
        },
        "headers": {
            "Location": {
                "description": "The job's URL.",
                "schema": {"type": "string", "pattern": "^/v1/jobs/[0-9a-f]{32}$"},
            },
            "RetryAfter": {
                "description": "Seconds to wait before trying again (or polling again).",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
            "IdempotencyReplayed": {
                "description": "`true` when the reply is the original job of this Idempotency-Key.",
                "schema": {"const": "true"},
            },
            "PreferenceApplied": {
                "description": "The preference honoured: `wait=N` or `respond-async`.",
                "schema": {"type": "string"},
            },
            "WwwAuthenticate": {
                "description": "The authentication scheme: Bearer.",
                "schema": {"type": "string"},
            },
        },
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": (
                    "An API key, `iq_<id>_<secret>`, made with `internvl-queue keys create`. "
                    "Needed on every /v1/ request, except while the API runs open "
                    "(INTERNVL_AUTH=open and no key exists): /readyz says which (`auth`)."
                ),
            }
        },
    }


def _enum_of(codes: dict[str, str], description: str) -> Schema:
    listing = "\n".join(f"- `{code}`: {why}" for code, why in codes.items())
    return {"type": "string", "enum": list(codes), "description": f"{description}\n\n{listing}"}


def _object(
    properties: dict[str, Schema], *, optional: tuple[str, ...] = (), description: str = ""
) -> Schema:
    """A closed object: every property but ``optional`` is required, and no other is allowed
    (the contract test then catches a field the code adds without the spec)."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


def _error() -> Schema:
    return {
        **_object(
            {
                "error": _object(
                    {
                        "code": ref("ErrorCode"),
                        "message": {
                            "type": "string",
                            "description": "One sentence saying what was wrong and what to do.",
                        },
                    }
                )
            }
        ),
        "example": {
            "error": {
                "code": "job_not_found",
                "message": "no job with id 'x' (unknown, or expired)",
            },
        },
    }


def _job_params() -> Schema:
    return _object(
        {
            "max_new_tokens": {"type": "integer", "minimum": 1},
            "max_tiles": {"type": "integer", "minimum": 1},
            "timeout_s": {"type": "integer", "minimum": 1},
        },
        description="The job's parameters, defaults filled in.",
    )


def _job() -> Schema:
    return {
        **_object(
            {
                "id": {"type": "string", "pattern": _JOB_ID_PATTERN},
                "status": ref("JobStatus"),
                "created_at": _TIMESTAMP,
                "started_at": _NULLABLE_TIMESTAMP,
                "finished_at": _NULLABLE_TIMESTAMP,
                "expires_at": {
                    **_TIMESTAMP,
                    "description": "When the record is deleted (retention after submission, "
                    "and again after the job finishes).",
                },
                "queue_position": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "description": "While queued: 1 for the next job its queue's workers "
                    "take (the lanes above its own first, then its own lane by submission; "
                    "approximate). null otherwise.",
                },
                "priority": {"type": "string", "enum": [p.value for p in Priority]},
                "cancel_requested_at": _NULLABLE_TIMESTAMP,
                "question": {"type": "string"},
                "params": ref("JobParams"),
                "metadata": {"type": ["object", "null"], "description": "As submitted."},
                "webhook": _nullable(ref("Webhook")),
                "result": {
                    **_nullable(ref("JobResult")),
                    "description": "Set exactly when the job succeeded.",
                },
                "error": {
                    **_nullable(ref("JobError")),
                    "description": "Set when the job failed or was canceled.",
                },
                "batch": {
                    "oneOf": [
                        _object({"id": {"type": "string"}, "custom_id": {"type": "string"}}),
                        {"type": "null"},
                    ],
                    "description": "The batch the job came in, and its line's custom_id.",
                },
            }
        ),
        "example": {
            "id": EXAMPLE_JOB_ID,
            "status": "succeeded",
            "created_at": "2026-11-24T14:00:00.123Z",
            "started_at": "2026-11-24T14:00:00.126Z",
            "finished_at": "2026-11-24T14:00:00.461Z",
            "expires_at": "2026-11-25T14:00:00.461Z",
            "queue_position": None,
            "priority": "normal",
            "cancel_requested_at": None,
            "question": "What animal is this?",
            "params": {"max_new_tokens": 64, "max_tiles": 6, "timeout_s": 600},
            "metadata": {"ref": "abc-1"},
            "webhook": None,
            "result": {
                "answer": "A cat sitting on a sofa.",
                "model": "OpenGVLab/InternVL3-1B-hf",
                "usage": {"prompt_tokens": 1566, "completion_tokens": 9, "image_tiles": 6},
                "batch_size": 37,
                "cached": False,
                "timings_ms": {"queued": 3.1, "preprocess": 21.4, "inference": 310.2, "total": 338},
            },
            "error": None,
            "batch": None,
        },
    }


def _job_list() -> Schema:
    return {
        **_object(
            {
                "data": {"type": "array", "items": ref("Job"), "maxItems": MAX_LIMIT},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass it as `cursor` for the next page; null: no more jobs.",
                },
            },
            description="A page of GET /v1/jobs.",
        ),
        "example": {"data": [], "next_cursor": None},
    }


def _listing_parameters() -> dict[str, Schema]:
    """The query of GET /v1/jobs (validated in ``core/job_listing.py``)."""
    return {
        "Status": {
            "name": "status",
            "in": "query",
            "required": False,
            "description": (
                "Only jobs in these states: comma-separated (`queued,running`); the parameter "
                "may also be repeated. Absent: every state."
            ),
            "style": "form",
            "explode": False,
            "schema": {"type": "array", "items": ref("JobStatus"), "minItems": 1},
            "example": ["queued", "running"],
        },
        "CreatedAfter": {
            "name": "created_after",
            "in": "query",
            "required": False,
            "description": (
                "Only jobs whose created_at, to the millisecond as the API writes it, is later: "
                "unix seconds, or an ISO 8601 date and time with its offset "
                "(`2026-11-24T14:00:00Z`). Passing back the newest created_at seen lists only "
                "newer jobs."
            ),
            "schema": {
                "anyOf": [
                    {"type": "number", "minimum": 0, "maximum": LATEST_TIMESTAMP},
                    {"type": "string", "format": "date-time"},
                ]
            },
            "example": "2026-11-24T14:00:00.123Z",
        },
        "Limit": {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": f"Most jobs in the page (1 to {MAX_LIMIT}).",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LIMIT,
                "default": DEFAULT_LIMIT,
            },
        },
        "Cursor": {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": (
                "`next_cursor` of the previous page, unchanged (opaque). Absent: start from the "
                "newest job."
            ),
            "schema": {"type": "string", "minLength": 1, "pattern": "^[A-Za-z0-9_-]+$"},
        },
    }


def _job_result() -> Schema:
    number: Schema = {"type": "number", "minimum": 0}
    count: Schema = {"type": "integer", "minimum": 0}
    return _object(
        {
            "answer": {"type": "string"},
            "model": {"type": "string", "description": "The checkpoint that answered."},
            "usage": _object(
                {"prompt_tokens": count, "completion_tokens": count, "image_tiles": count}
            ),
            "batch_size": {
                "type": ["integer", "null"],
                "minimum": 1,
                "description": "Jobs in the GPU batch; null when answered from the result cache.",
            },
            "cached": {
                "type": "boolean",
                "description": (
                    "true: answered at submit from the result cache (an identical earlier job's "
                    "answer; no GPU ran: timings are 0 but total, the API's time). Absent in "
                    "results stored before the cache existed."
                ),
            },
            "timings_ms": _object(
                {"queued": number, "preprocess": number, "inference": number, "total": number}
            ),
        },
        optional=("cached",),
    )


def _delivery() -> Schema:
    return _object(
        {
            "event_id": {"type": "string", "description": "The webhook-id header of the event."},
            "type": ref("WebhookEventType"),
            "attempt": {"type": "integer", "minimum": 1},
            "at": _TIMESTAMP,
            "url": {"type": "string"},
            "status_code": {"type": ["integer", "null"], "description": "null: no reply came."},
            "error": {"type": ["string", "null"]},
            "duration_ms": {"type": "number", "minimum": 0},
            "outcome": {"type": "string", "enum": [o.value for o in DeliveryOutcome]},
            "next_attempt_at": _NULLABLE_TIMESTAMP,
        },
        description="One webhook attempt.",
    )


def _submit_fields(settings: Settings) -> dict[str, Schema]:
    """The fields a submit takes besides its images, the same in JSON and in a form."""
    return {
        "question": {
            "type": "string",
            "minLength": 1,
            "maxLength": settings.max_question_chars,
            "description": (
                "At least one visible character; at most INTERNVL_MAX_QUESTION_CHARS characters "
                "and 4 UTF-8 bytes per allowed token (INTERNVL_MAX_QUESTION_TOKENS)."
            ),
            "example": "What animal is this?",
        },
        "max_new_tokens": {
            "type": "integer",
            "minimum": 1,
            "maximum": settings.max_new_tokens_limit,
            "default": settings.default_max_new_tokens,
            "description": "Most tokens in the answer.",
        },
        "max_tiles": {
            "type": "integer",
            "minimum": 1,
            "maximum": settings.max_tiles,
            "default": settings.max_tiles,
            "description": "Most 448-px tiles per image (dynamic tiling).",
        },
        "timeout_s": {
            "type": "integer",
            "minimum": 1,
            "maximum": settings.max_timeout_s,
            "default": settings.default_timeout_s,
            "description": "Deadline from submission; past it the job fails with `timeout`.",
        },
        "priority": {
            "type": "string",
            "enum": [p.value for p in Priority],
            "default": Priority.NORMAL.value,
            "description": (
                "The job's lane: workers take every high job before any normal one, and every "
                "normal one before any low one. "
                + (
                    f"An API key may have at most {settings.max_high_per_key} high jobs queued "
                    "or running (INTERNVL_MAX_HIGH_PER_KEY)."
                    if settings.max_high_per_key
                    else "High jobs per API key are not limited (INTERNVL_MAX_HIGH_PER_KEY=0)."
                )
            ),
        },
        "cache": {
            "type": "boolean",
            "default": True,
            "description": (
                "false: neither answered from the result cache nor kept in it (the model runs). "
                "Only matters where the operator turned the cache on (INTERNVL_RESULT_CACHE_TTL_S)."
            ),
        },
        "webhook_url": {
            "type": "string",
            # Not format "uri": an empty value (a form's empty field) means no webhook.
            "pattern": "^$|^[Hh][Tt][Tt][Pp][Ss]?://",
            "description": (
                "An http(s) URL that receives the job's signed events (empty: none); refused "
                "unless the service has WEBHOOK_SECRETS, and if it resolves to a non-public "
                "address."
            ),
        },
    }


# webhook_events only beside a webhook_url that is not empty.
_EVENTS_NEED_A_URL: Schema = {
    "required": ["webhook_url"],
    "properties": {"webhook_url": {"minLength": 1}},
}
_METADATA_DESCRIPTION = (
    f"A strict JSON object (no NaN/Infinity, at most 32 levels, at most {MAX_METADATA_BYTES} "
    "bytes), returned as is."
)
_EVENTS_DESCRIPTION = (
    f"Events sent to webhook_url; default {', '.join(DEFAULT_EVENTS)}. Needs webhook_url."
)


def _submit_json(settings: Settings) -> Schema:
    return {
        "type": "object",
        "required": ["question", "images"],
        "dependentSchemas": {"webhook_events": _EVENTS_NEED_A_URL},
        "properties": {
            "images": {
                "type": "array",
                "minItems": 1,
                "maxItems": settings.max_images,
                "items": {
                    "oneOf": [
                        _object(
                            {
                                "data": {
                                    "type": "string",
                                    "pattern": _BASE64_IMAGE,
                                    "contentEncoding": "base64",
                                    "contentMediaType": "image/*",
                                    "description": (
                                        "The image file, base64 or a data: URL; JPEG, PNG, "
                                        "WebP, GIF, BMP or TIFF, at most "
                                        f"{settings.max_image_pixels} pixels."
                                    ),
                                }
                            }
                        ),
                        _object({"url": _image_url(settings)}),
                    ]
                },
                "description": (
                    f"In order, inline and by URL mixed; together at most "
                    f"{settings.max_request_pixels} pixels and {settings.max_request_bytes} bytes."
                ),
            },
            **_submit_fields(settings),
            "metadata": {"type": "object", "description": _METADATA_DESCRIPTION},
            "webhook_events": {
                "type": "array",
                "items": ref("WebhookEventType"),
                "minItems": 1,
                "description": _EVENTS_DESCRIPTION,
            },
        },
        "example": {
            "question": "What animal is this?",
            "images": [{"data": EXAMPLE_IMAGE_BASE64}],
            "max_new_tokens": 8,
            "metadata": {"ref": "abc-1"},
        },
    }


def _submit_form(settings: Settings) -> Schema:
    return {
        "type": "object",
        "required": ["question"],
        "anyOf": [{"required": ["image"]}, {"required": ["image_url"]}],
        "dependentSchemas": {"webhook_events": _EVENTS_NEED_A_URL},
        "properties": {
            "image": {
                "type": "array",
                "minItems": 1,
                "maxItems": settings.max_images,
                "items": {
                    "type": "string",
                    "format": "binary",
                    "contentMediaType": "image/*",
                    "minLength": 1,
                },
                "description": (
                    "One part per image file, in order: JPEG, PNG, WebP, GIF, BMP or TIFF, each "
                    f"at most {settings.max_image_pixels} pixels, together at most "
                    f"{settings.max_request_pixels}."
                ),
            },
            "image_url": {
                "type": "array",
                "minItems": 1,
                "maxItems": settings.max_images,
                "items": _image_url(settings),
                "description": (
                    "Images by URL, one field each, fetched at submit; they follow the image "
                    f"files, in order. Files and URLs together at most {settings.max_images}."
                ),
            },
            **_submit_fields(settings),
            # A JSON part (the submit's encoding says application/json): the object's text.
            "metadata": {"type": "object", "description": _METADATA_DESCRIPTION},
            "webhook_events": {
                "type": "array",
                "items": {"type": "string"},
                "description": (
                    f"{_EVENTS_DESCRIPTION} Repeated fields, each an event name, a comma-"
                    'separated list or a JSON list (["job.failed", "job.started"]).'
                ),
            },
        },
    }


def _image_url(settings: Settings) -> Schema:
    return {
        "type": "string",
        "format": "uri",
        "pattern": "^https?://",
        "maxLength": MAX_URL_CHARS,
        "description": (
            "An http(s) URL the API fetches at submit, through the SSRF guard (public addresses "
            f"only, at most {MAX_REDIRECTS} redirects, each re-checked); within "
            f"{settings.image_fetch_timeout_s:g} s for all of a request's URLs; the bytes then "
            "checked like an upload's (the format from the bytes, not the Content-Type)."
        ),
    }


def _readiness() -> Schema:
    return _object(
        {
            "status": {"type": "string", "enum": ["ready", "not_ready"]},
            "message": {"type": "string", "description": "Why, in one sentence."},
            "queue": {"type": "string", "description": "This API's queue (INTERNVL_QUEUE)."},
            "redis": {"type": "boolean"},
            "workers": {"type": "array", "items": ref("Worker")},
            "auth": {
                "type": "string",
                "enum": ["api_keys", "open", "unknown"],
                "description": "Whether /v1/ requests need an API key (unknown: Redis is down).",
            },
        }
    )


def _worker() -> Schema:
    count: Schema = {"type": "integer", "minimum": 0}
    epoch: Schema = {"type": "number", "description": "Unix seconds."}
    return _object(
        {
            "name": {"type": "string"},
            "pid": {"type": "integer"},
            "model": {"type": "string"},
            "device": {"type": "string"},
            "gpu_name": {"type": ["string", "null"]},
            "loaded_at": epoch,
            "last_seen": epoch,
            "jobs_succeeded": count,
            "jobs_failed": count,
            "jobs_done": count,
            "redeliveries_ignored": count,
            "engine": {"type": ["object", "null"], "description": "Batching counters."},
            "gpu_index": {
                "type": ["integer", "null"],
                "description": "Its host GPU (worker --gpus); the first of its GPUs if several.",
            },
            "gpus": {
                "type": ["array", "null"],
                "items": {"type": "integer", "minimum": 0},
                "description": (
                    "The host GPUs it owns (worker --gpus; with --gpus-per-worker, its group, "
                    "the model loaded across them); null for a worker not started by --gpus."
                ),
            },
            "gpu_names": {
                "type": ["array", "null"],
                "items": {"type": "string"},
                "description": "The name of each GPU its model is on, in order; null off CUDA.",
            },
            "state": {"type": "string", "enum": [s.value for s in WorkerState]},
            "since": epoch,
            "error": {"type": ["string", "null"]},
            "threads": count,
            "queue": {"type": ["string", "null"]},
            "consuming": {"type": ["boolean", "null"]},
            "gpu_memory": {
                "type": ["object", "null"],
                "description": (
                    "Its GPU's memory in bytes: allocated (live tensors), reserved (this "
                    "process's caching allocator), used and total (the whole device), summed "
                    "over its GPUs when it spans several; null on the CPU."
                ),
                "additionalProperties": False,
                "properties": {name: count for name in ("allocated", "reserved", "used", "total")},
            },
        }
    )
