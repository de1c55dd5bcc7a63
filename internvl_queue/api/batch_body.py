"""Read a ``POST /v1/batches`` body into its lines and options (no validation of the lines).

Three shapes are accepted:

- JSON Lines (``application/jsonl``, ``application/x-ndjson``): one request object a line; blank
  lines are skipped; options in the query string (``?all_or_nothing=true&webhook_url=...``;
  metadata only in the JSON object shape).
- A JSON array of request objects (``application/json``); options in the query string.
- A JSON object ``{"requests": [...], "all_or_nothing", "webhook_url", "metadata"}`` (an
  option it leaves out or sets to null is taken from the query string).

A line that is not strict JSON is not a reason to refuse the batch: it becomes that line's error
(``invalid_json``), like any other invalid line. What makes the whole body unreadable (not
UTF-8, a JSON body that is not strict JSON, no line at all, too many lines) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Request

from ..core import strict_json
from ..core.batches import LineError
from ..core.errors import BadRequest, UnsupportedMediaType, ValidationFailed
from .form_body import not_utf8

__all__ = ["JSON_LINES_TYPES", "BatchBody", "read_batch_body"]

JSON_LINES_TYPES = ("application/jsonl", "application/x-ndjson", "application/json-lines")
_ENVELOPE_FIELDS = frozenset({"requests", "all_or_nothing", "webhook_url", "metadata"})


@dataclass(frozen=True)
class BatchBody:
    # (line number, the parsed line) in input order; a line that did not parse is its error.
    lines: list[tuple[int, Any]]
    all_or_nothing: bool = False
    webhook_url: Any = None
    metadata: Any = None


def read_batch_body(request: Request, max_lines: int) -> BatchBody:
    if request.mimetype in JSON_LINES_TYPES:
        body = BatchBody(_json_lines(_text(request)), **_query_options(request))
    elif request.mimetype == "application/json":
        body = _json(_text(request), request)
    else:
        raise UnsupportedMediaType(
            "send the batch as JSON Lines (application/jsonl, one request a line) or as JSON "
            f'(application/json: an array, or {{"requests": [...]}}), not '
            f"{request.mimetype or 'a body without a content type'}"
        )
    if not body.lines:
        raise BadRequest("the batch has no request; send at least one line", code="empty_batch")
    if len(body.lines) > max_lines:
        raise ValidationFailed(
            f"the batch has {len(body.lines)} requests; at most {max_lines} "
            "(INTERNVL_MAX_BATCH_REQUESTS): split it into several batches",
            code="too_many_batch_requests",
        )
    return body


def _text(request: Request) -> str:
    try:
        return request.get_data(cache=False).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise not_utf8("the batch body", exc) from None


def _json_lines(text: str) -> list[tuple[int, Any]]:
    lines: list[tuple[int, Any]] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            lines.append((number, strict_json.parse(raw)))
        except strict_json.NotStrictJson as exc:
            lines.append((number, LineError(number, None, "invalid_json", f"not JSON: {exc}")))
    return lines


def _json(text: str, request: Request) -> BatchBody:
    try:
        body = strict_json.parse(text)
    except strict_json.NotStrictJson as exc:
        raise BadRequest(
            f"the body must be strict JSON (an array of requests, or an object with "
            f'"requests"), but {exc}',
            code="invalid_json",
        ) from None
    query = _query_options(request)  # checked whatever the body's shape
    if isinstance(body, list):
        return BatchBody(list(enumerate(body, start=1)), **query)
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise BadRequest(
            'the body must be a JSON array of requests, or an object with a "requests" array',
            code="invalid_json",
        )
    unknown = sorted(set(body) - _ENVELOPE_FIELDS)
    if unknown:
        raise ValidationFailed(
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"in the batch; it may have {', '.join(sorted(_ENVELOPE_FIELDS))}",
            code="invalid_parameter",
        )
    # The body's options, where it has them; the query string's otherwise.
    return BatchBody(
        list(enumerate(body["requests"], start=1)),
        all_or_nothing=query["all_or_nothing"]
        if body.get("all_or_nothing") is None
        else _flag(body["all_or_nothing"]),
        webhook_url=_either(body.get("webhook_url"), query["webhook_url"]),
        metadata=_either(body.get("metadata"), query["metadata"]),
    )


def _either(preferred: Any, fallback: Any) -> Any:
    return fallback if preferred is None else preferred


_QUERY_OPTIONS = frozenset({"all_or_nothing", "webhook_url"})


def _query_options(request: Request) -> dict[str, Any]:
    # Refused, not ignored: a typo (all_or_nothin=true) would silently run the batch otherwise.
    unknown = sorted(set(request.args) - _QUERY_OPTIONS)
    if unknown:
        raise ValidationFailed(
            f"unknown query parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} for a batch; it may have "
            f"{', '.join(sorted(_QUERY_OPTIONS))}",
            code="invalid_parameter",
        )
    return {
        "all_or_nothing": _flag(request.args.get("all_or_nothing")),
        "webhook_url": request.args.get("webhook_url"),
        "metadata": None,  # only in the JSON object shape: a query string is no place for JSON
    }


def _flag(raw: Any) -> bool:
    """A JSON boolean (or null), or in a query string true/false/1/0 (or empty)."""
    if raw is None or raw is False or (isinstance(raw, str) and raw in ("", "false", "0")):
        return False
    if raw is True or (isinstance(raw, str) and raw in ("true", "1")):
        return True
    raise ValidationFailed("all_or_nothing must be true or false", code="invalid_parameter")
