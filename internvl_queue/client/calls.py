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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from ..core.backoff import parse_retry_after
from .errors import ClientError
from .images import FilePart, ImageInput, image_parts
from .job import Job

__all__ = [
    "POLL_S",
    "WAIT_MARGIN_S",
    "Call",
    "cancel_call",
    "deliveries_call",
    "job_deadline_s",
    "list_call",
    "parse_json",
    "read_call",
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
) -> Call:
    """``POST /v1/jobs`` as multipart; an ``Idempotency-Key`` is made when none is given, so
    that a retry of this very request can never create a second job."""
    fields = {"question": question}
    for name, value in (
        ("max_new_tokens", max_new_tokens),
        ("max_tiles", max_tiles),
        ("timeout_s", timeout_s),
        ("webhook_url", webhook_url),
    ):
        if value is not None:
            fields[name] = str(value)
    if metadata is not None:
        fields["metadata"] = json.dumps(dict(metadata))
    if webhook_events is not None:
        names = [webhook_events] if isinstance(webhook_events, str) else list(webhook_events)
        fields["webhook_events"] = ",".join(names)
    key = idempotency_key if idempotency_key is not None else uuid.uuid4().hex
    return Call(
        "POST",
        "/v1/jobs",
        headers={"Idempotency-Key": key},
        data=fields,
        files=image_parts(images),
    )


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
