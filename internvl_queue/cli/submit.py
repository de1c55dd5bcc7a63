"""``internvl-queue submit``: post images and a question; optionally wait for the answer."""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import requests

__all__ = ["submit"]

_TERMINAL = {"succeeded", "failed", "canceled"}


def submit(
    api_url: str,
    images: list[Path],
    question: str,
    *,
    max_new_tokens: int | None,
    max_tiles: int | None,
    wait: bool,
    timeout_s: float,
    api_key: str | None = None,
) -> int:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    fields = {"question": question}
    if max_new_tokens is not None:
        fields["max_new_tokens"] = str(max_new_tokens)
    if max_tiles is not None:
        fields["max_tiles"] = str(max_tiles)
    with ExitStack() as stack:
        files = [("image", (p.name, stack.enter_context(p.open("rb")))) for p in images]
        reply = requests.post(
            f"{api_url}/v1/jobs", data=fields, files=files, headers=headers, timeout=60
        )
    if reply.status_code != 202:
        print(json.dumps(reply.json(), indent=2), file=sys.stderr)
        return 1
    job = reply.json()
    if not wait:
        print(json.dumps(job, indent=2))
        return 0
    deadline = time.monotonic() + timeout_s
    while job["status"] not in _TERMINAL:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            print(f"gave up waiting for job {job['id']} (status {job['status']})", file=sys.stderr)
            return 2
        # A long poll: the API answers as soon as the job finishes.
        wait_s = min(remaining, 30)
        job = requests.get(
            f"{api_url}/v1/jobs/{job['id']}",
            params={"wait": f"{wait_s:.1f}"},
            headers=headers,
            timeout=wait_s + 30,
        ).json()
    if job["status"] == "succeeded":
        print(job["result"]["answer"])
        return 0
    print(json.dumps(job, indent=2), file=sys.stderr)
    return 1
