"""``internvl-queue submit``: post images and a question; optionally wait for the answer.

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

import requests

__all__ = ["WAIT_MARGIN_S", "JobOptions", "submit"]

# How long ``--wait`` waits past the job's deadline: a running job is stopped between decode
# steps once its deadline passes and then stored as failed, which takes a moment.
WAIT_MARGIN_S = 10.0
# Seconds one long poll asks the API to hold the request (the API allows up to 60).
_POLL_S = 30.0
_TERMINAL = {"succeeded", "failed", "canceled"}


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
        return _submit(api_url, images, question, options, wait=wait, api_key=api_key)
    except _Stop as stop:
        print(f"internvl-queue submit: {stop}", file=sys.stderr)
        return stop.status


def _submit(
    api_url: str,
    images: list[Path],
    question: str,
    options: JobOptions,
    *,
    wait: bool,
    api_key: str | None,
) -> int:
    fields = _fields(question, options)
    files = [("image", (path.name, _read(path))) for path in images]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    submitted = time.monotonic()
    reply = _call(
        api_url,
        "post",
        "/v1/jobs",
        data=fields,
        files=files,
        headers={**headers, **_idempotency(options)},
        timeout=60,
    )
    if reply.status_code != 202:
        raise _Stop(_refusal("refused the job", reply), 1)
    job: dict[str, Any] = reply.json()
    if not wait:
        print(json.dumps(job, indent=2))
        return 0
    # The job's deadline counts from submission (a replayed Idempotency-Key job's from earlier,
    # which only makes this wait longer than needed).
    deadline = submitted + job["params"]["timeout_s"] + WAIT_MARGIN_S
    while job["status"] not in _TERMINAL:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Stop(
                f"job {job['id']} is still {job['status']} {WAIT_MARGIN_S:g} s after its "
                f"deadline (timeout_s={job['params']['timeout_s']}); is a worker running? "
                "(see /readyz)",
                3,
            )
        # A long poll: the API answers as soon as the job finishes.
        poll_s = min(remaining, _POLL_S)
        reply = _call(
            api_url,
            "get",
            f"/v1/jobs/{job['id']}",
            params={"wait": f"{poll_s:.1f}"},
            headers=headers,
            timeout=poll_s + 30,
        )
        if reply.status_code != 200:
            raise _Stop(_refusal(f"did not return job {job['id']}", reply), 1)
        job = reply.json()
    if job["status"] == "succeeded":
        print(job["result"]["answer"])
        return 0
    error = job.get("error") or {}
    raise _Stop(
        f"job {job['id']} {job['status']} ({error.get('code', '?')}): {error.get('message', '')}",
        1,
    )


def _fields(question: str, options: JobOptions) -> dict[str, str]:
    fields = {"question": question}
    for name, value in (
        ("max_new_tokens", options.max_new_tokens),
        ("max_tiles", options.max_tiles),
        ("timeout_s", options.timeout_s),
        ("webhook_url", options.webhook_url),
        ("webhook_events", options.webhook_events),
    ):
        if value is not None:
            fields[name] = str(value)
    if options.metadata is not None:
        # Checked here, so that a typo costs no round trip and names the flag.
        try:
            metadata = json.loads(options.metadata)
        except ValueError as exc:
            raise _Stop(
                f'--metadata is not valid JSON ({exc}); e.g. \'{{"ref": "abc-1"}}\'', 2
            ) from None
        if not isinstance(metadata, dict):
            raise _Stop('--metadata must be a JSON object, e.g. \'{"ref": "abc-1"}\'', 2)
        fields["metadata"] = options.metadata
    return fields


def _idempotency(options: JobOptions) -> dict[str, str]:
    key = options.idempotency_key
    return {} if key is None else {"Idempotency-Key": key}


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _Stop(f"cannot read image {str(path)!r}: {exc.strerror or exc}", 2) from None


def _call(api_url: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    try:
        return requests.request(method, f"{api_url}{path}", **kwargs)
    except requests.ConnectionError:
        raise _Stop(
            f"cannot reach the API at {api_url}; start it (internvl-queue up), or name another "
            "with --api or INTERNVL_API",
            1,
        ) from None
    except requests.Timeout:
        raise _Stop(f"the API at {api_url} did not answer in time; try again", 1) from None


def _refusal(what: str, reply: requests.Response) -> str:
    """``the API <what> (<status> <code>): <message>``, from an error reply of any shape."""
    try:
        error = reply.json()["error"]
        return f"the API {what} ({reply.status_code} {error['code']}): {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"the API {what} (HTTP {reply.status_code}, not a JSON error: {reply.text[:200]!r})"
