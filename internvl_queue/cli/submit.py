"""``internvl-queue submit``: post images and a question; optionally wait for the answer.

Built on ``internvl_queue.client``: its retries (429/503 after ``Retry-After``, dropped
connections, each submit with an ``Idempotency-Key``) and its long polls are the command's.

Every failure a user can cause (an unreadable image, bad ``--metadata``, a refused request, an
API that does not answer, a job that fails) ends in one line on stderr and a non-zero status:

    0  the job was accepted (printed), or with ``--wait`` it succeeded (its answer printed)
    1  the API refused the job or could not be reached, or the job failed or was canceled
    2  bad arguments: an image that cannot be read, ``--metadata`` that is not a JSON object
    3  with ``--wait``: the job had not finished when its own deadline had passed (plus a margin)
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..client import (
    WAIT_MARGIN_S,
    ApiError,
    ApiUnreachable,
    Client,
    ClientError,
    ImageUnreadable,
    JobFailed,
    JobStatus,
    WaitTimeout,
)

__all__ = ["WAIT_MARGIN_S", "JobOptions", "submit"]

# Seconds to connect, and for each part of a reply (an upload of 20 MB may be slow to answer).
_HTTP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class JobOptions:
    """The optional job fields, as given on the command line (None: the service's default)."""

    max_new_tokens: int | None = None
    max_tiles: int | None = None
    timeout_s: int | None = None
    metadata: str | None = None  # JSON text of an object
    webhook_url: str | None = None
    webhook_events: str | None = None  # comma-separated event names
    idempotency_key: str | None = None


class _Stop(Exception):
    """Ends the command: ``message`` on one line of stderr, exit ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def submit(
    api_url: str,
    images: list[Path],
    question: str,
    options: JobOptions,
    *,
    wait: bool,
    api_key: str | None = None,
) -> int:
    try:
        # "" and not None: the key is the command's (--api-key, else $INTERNVL_API_KEY), read
        # once by its argument parser.
        with Client(api_url, api_key=api_key or "", timeout=_HTTP_TIMEOUT_S) as client:
            return _submit(client, images, question, options, wait=wait)
    except _Stop as stop:
        print(f"internvl-queue submit: {stop}", file=sys.stderr)
        return stop.status


def _submit(
    client: Client, images: list[Path], question: str, options: JobOptions, *, wait: bool
) -> int:
    metadata = _metadata(options.metadata)  # checked first: a typo costs no upload
    submitted = time.monotonic()
    try:
        job = client.submit(
            images,
            question,
            max_new_tokens=options.max_new_tokens,
            max_tiles=options.max_tiles,
            timeout_s=options.timeout_s,
            metadata=metadata,
            webhook_url=options.webhook_url,
            webhook_events=options.webhook_events,
            idempotency_key=options.idempotency_key,
        )
    except ImageUnreadable as exc:
        raise _Stop(str(exc), 2) from None
    except ClientError as exc:
        raise _Stop(_failure("refused the job", exc, client), 1) from None
    if not wait:
        print(json.dumps(job.raw, indent=2))
        return 0
    # The job's deadline counts from submission (a replayed Idempotency-Key job's from earlier,
    # which only makes this wait longer than needed).
    timeout_s = job.params["timeout_s"]
    deadline = submitted + timeout_s + WAIT_MARGIN_S
    try:
        job = client.wait(job, timeout=deadline - time.monotonic())
    except WaitTimeout as exc:
        raise _Stop(
            f"job {job.id} is still {exc.job.status} {WAIT_MARGIN_S:g} s after its deadline "
            f"(timeout_s={timeout_s}); is a worker running? (see /readyz)",
            3,
        ) from None
    except ClientError as exc:
        raise _Stop(_failure(f"did not return job {job.id}", exc, client), 1) from None
    if job.status is JobStatus.SUCCEEDED and job.result is not None:
        print(job.result.answer)
        return 0
    raise _Stop(str(JobFailed(job)), 1)


def _metadata(text: str | None) -> dict[str, Any] | None:
    """``--metadata`` parsed, so that a typo costs no round trip and names the flag."""
    if text is None:
        return None
    try:
        metadata = json.loads(text)
    except ValueError as exc:
        example = '\'{"ref": "abc-1"}\''
        raise _Stop(f"--metadata is not valid JSON ({exc}); e.g. {example}", 2) from None
    if not isinstance(metadata, dict):
        raise _Stop('--metadata must be a JSON object, e.g. \'{"ref": "abc-1"}\'', 2)
    return metadata


def _failure(what: str, exc: ClientError, client: Client) -> str:
    """One sentence for a request that failed: refused (``the API <what> (<status> <code>):
    <message>``), or never answered."""
    if isinstance(exc, ApiUnreachable):
        if exc.timed_out:
            return f"the API at {client.base_url} did not answer in time; try again"
        return (
            f"cannot reach the API at {client.base_url}; start it (internvl-queue up), or name "
            "another with --api or INTERNVL_API"
        )
    if isinstance(exc, ApiError):
        if not exc.json_body:
            return f"the API {what} ({exc.message})"
        return f"the API {what} ({exc.status} {exc.code}): {exc.message}"
    return str(exc)
