"""The client's requests and how their replies read (sans-IO: shared by the sync and async
clients, which only send what is built here).

``wait`` long-polls ``GET /v1/jobs/<id>?wait=N`` (README "Wait instead of polling"): the API
answers as soon as the job finishes, or with the job as it is after N seconds, or at once with
``Retry-After: 1`` when it holds as many long polls as it may or is stopping (a restart): the
client then polls again after that many seconds.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from ..core.backoff import parse_retry_after
from .errors import ClientError
from .images import FilePart, ImageInput, has_url, image_json, image_parts, listed
from .job import Job

__all__ = [
    "POLL_S",
    "WAIT_MARGIN_S",
    "Call",
    "batch_call",
    "batch_cancel_call",
    "batch_results_call",
    "batch_submit_call",
    "cancel_call",
    "deliveries_call",
    "job_deadline_s",
    "list_call",
    "parse_json",
    "read_call",
    "result_lines",
    "retry_after_of",
    "submit_call",
]

# Seconds one long poll asks the API to hold the request (it allows up to 60; shorter polls
# also pass proxies that cut idle connections at a minute).
POLL_S = 30.0
# How long ``wait`` without a timeout waits past the job's own deadline: a running job is
# stopped between decode steps once its deadline passes and then stored as failed, which takes
# a moment.
WAIT_MARGIN_S = 10.0


@dataclass(frozen=True)
class Call:
    """One HTTP request of the API, ready to send."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] | None = None
    files: list[FilePart] | None = None
    json: Any = None  # a JSON body (instead of ``data``/``files``)
    # Whether the request may be sent again when no answer came (it may have gone through):
    # every request of this API is (submits carry an Idempotency-Key).
    repeatable: bool = True
    # A long poll: the API holds the request this long, so the read timeout grows by it.
    wait_s: float = 0.0


def submit_call(
    images: ImageInput | Iterable[ImageInput],
    question: str,
    *,
    max_new_tokens: int | None = None,
    max_tiles: int | None = None,
    timeout_s: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    webhook_url: str | None = None,
    webhook_events: Iterable[str] | str | None = None,
    idempotency_key: str | None = None,
    priority: str | None = None,
) -> Call:
    """``POST /v1/jobs``: multipart, or JSON when an image is a URL (JSON keeps the images'
    order, where a form sends its ``image_url`` fields after the files). An ``Idempotency-Key``
    is made when none is given, so that a retry of this very request can never create a second
    job."""
    body = job_body(
        question,
        max_new_tokens=max_new_tokens,
        max_tiles=max_tiles,
        timeout_s=timeout_s,
        metadata=metadata,
        webhook_url=webhook_url,
        webhook_events=webhook_events,
        priority=priority,
    )
    key = idempotency_key if idempotency_key is not None else uuid.uuid4().hex
    headers = {"Idempotency-Key": key}
    given = listed(images)
    if has_url(given):
        return Call("POST", "/v1/jobs", headers=headers, json={**body, "images": image_json(given)})
    fields = {
        name: json.dumps(value) if isinstance(value, dict) else str(value)
        for name, value in body.items()
    }
    if "webhook_events" in body:
        fields["webhook_events"] = ",".join(body["webhook_events"])
    return Call("POST", "/v1/jobs", headers=headers, data=fields, files=image_parts(given))


def job_body(
    question: str,
    *,
    max_new_tokens: int | None = None,
    max_tiles: int | None = None,
    timeout_s: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    webhook_url: str | None = None,
    webhook_events: Iterable[str] | str | None = None,
    priority: str | None = None,
) -> dict[str, Any]:
    """A job's fields as JSON values, those left None out (the service's defaults)."""
    body: dict[str, Any] = {"question": question}
    for name, value in (
        ("max_new_tokens", max_new_tokens),
        ("max_tiles", max_tiles),
        ("timeout_s", timeout_s),
        ("webhook_url", webhook_url),
        ("priority", priority),
    ):
        if value is not None:
            body[name] = value
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if webhook_events is not None:
        names = [webhook_events] if isinstance(webhook_events, str) else list(webhook_events)
        body["webhook_events"] = names
    return body


def batch_submit_call(
    requests: Iterable[Mapping[str, Any]],
    *,
    all_or_nothing: bool = False,
    webhook_url: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Call:
    """``POST /v1/batches`` (the object body). Each request is a job's JSON fields plus a
    ``custom_id``; its ``images`` may be given as to ``submit`` (paths, bytes, PIL images,
    URLs) and are sent as base64 or ``{"url": ...}``.

    An ``Idempotency-Key`` is made when none is given: a retry (the same body, the same key)
    gets the batch the first attempt made, or completes it if the API died storing it."""
    lines = []
    for request in requests:
        line = dict(request)
        if "images" in line:
            line["images"] = image_json(line["images"])
        lines.append(line)
    body: dict[str, Any] = {"requests": lines, "all_or_nothing": all_or_nothing}
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    if metadata is not None:
        body["metadata"] = dict(metadata)
    key = idempotency_key if idempotency_key is not None else uuid.uuid4().hex
    return Call("POST", "/v1/batches", headers={"Idempotency-Key": key}, json=body)


def batch_call(batch_id: str) -> Call:
    return Call("GET", _batch_path(batch_id))


def batch_results_call(batch_id: str) -> Call:
    return Call("GET", f"{_batch_path(batch_id)}/results")


def batch_cancel_call(batch_id: str) -> Call:
    return Call("POST", f"{_batch_path(batch_id)}/cancel")


def _batch_path(batch_id: str) -> str:
    if not batch_id:
        raise ValueError("a batch id is needed")
    return f"/v1/batches/{quote(batch_id, safe='')}"


def result_lines(body: bytes) -> Iterator[dict[str, Any]]:
    """The lines of ``GET /v1/batches/<id>/results``, each a dict."""
    for line in body.splitlines():
        if line.strip():
            yield parse_json(line)


def list_call(
    *,
    status: str | Iterable[str] | None = None,
    created_after: datetime | float | str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call:
    """``GET /v1/jobs``: one page of the caller's jobs, newest first, after ``cursor``.

    ``status``: a state or several (``JobStatus`` values). ``created_after``: a timezone-aware
    ``datetime``, unix seconds, or the API's own ISO 8601 text (a job's ``created_at``)."""
    params: dict[str, str] = {}
    if status is not None:
        params["status"] = ",".join([status] if isinstance(status, str) else status)
    if created_after is not None:
        params["created_after"] = _moment(created_after)
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/v1/jobs", params=params)


def _moment(value: datetime | float | str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(
                "created_after needs a timezone-aware datetime (datetime.now(timezone.utc), ...)"
            )
        return value.isoformat()
    return value if isinstance(value, str) else repr(float(value))


def read_call(job_id: str, wait_s: float = 0.0) -> Call:
    """``GET /v1/jobs/<id>``; with ``wait_s`` a long poll of that many seconds."""
    params = {"wait": f"{wait_s:.1f}"} if wait_s > 0 else {}
    return Call("GET", _job_path(job_id), params=params, wait_s=wait_s)


def cancel_call(job_id: str) -> Call:
    return Call("POST", f"{_job_path(job_id)}/cancel")


def deliveries_call(job_id: str) -> Call:
    return Call("GET", f"{_job_path(job_id)}/deliveries")


def _job_path(job_id: str) -> str:
    if not job_id:
        raise ValueError("a job id is needed")
    return f"/v1/jobs/{quote(job_id, safe='')}"


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise ClientError(
            f"the API answered with something that is not JSON: {body[:200]!r}; is the URL "
            "that of an internvl-queue API?"
        ) from None


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """Seconds from a reply's ``Retry-After`` (delta-seconds or an HTTP date), if any."""
    return parse_retry_after(headers.get("Retry-After"), time.time())


def job_deadline_s(job: Job, now: float) -> float:
    """Seconds from ``now`` (epoch) until the job's own deadline (``timeout_s`` from its
    submission) plus ``WAIT_MARGIN_S``: by then a job has ended, while any worker runs.

    The clocks of client and API may differ: the answer is kept within 0..timeout_s (+ margin).
    """
    timeout_s = float(job.params.get("timeout_s", 0))
    left = job.created_at.timestamp() + timeout_s - now
    return min(max(left, 0.0), timeout_s) + WAIT_MARGIN_S
