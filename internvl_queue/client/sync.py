"""``Client``: the API from Python, on ``requests``.

    from internvl_queue.client import Client

    with Client("http://127.0.0.1:8000") as client:
        job = client.run(["examples/cat.jpg"], "What animal is this?")
        print(job.result.answer, job.result.usage.completion_tokens)

Every request is retried on ``429``/``503`` (after the API's ``Retry-After``) and when no answer
came (see ``retry.py``). ``wait`` goes further: once it has read the job, it rides out an API
restart or a Redis outage for as long as its own timeout allows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import requests

from .. import __version__
from .attempts import Attempts
from .batch import Batch
from .calls import (
    POLL_S,
    WAIT_MARGIN_S,
    Call,
    batch_call,
    batch_cancel_call,
    batch_results_call,
    batch_submit_call,
    cancel_call,
    deliveries_call,
    job_deadline_s,
    list_call,
    parse_json,
    read_call,
    result_lines,
    retry_after_of,
    submit_call,
)
from .deliveries import Delivery
from .errors import (
    ClientError,
    Conflict,
    JobFailed,
    WaitTimeout,
)
from .images import ImageInput
from .job import Job, JobPage, JobStatus
from .retry import RetryPolicy

__all__ = ["API_KEY_ENV", "Client"]

API_KEY_ENV = "INTERNVL_API_KEY"
# What "no answer" is: the request may or may not have reached the API (hence retried only
# when safe to repeat, which every request of this client is).
_NO_ANSWER = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class Client:
    """A client of one internvl-queue API.

    ``api_key``: sent as ``Authorization: Bearer``; None reads ``$INTERNVL_API_KEY`` (none: the
    API must run open). ``timeout``: seconds to connect, and to wait for each part of a reply
    (a long poll adds its own wait). ``retry``: how often and how long to retry (``RetryPolicy``).
    ``session``: a ``requests.Session`` of your own (proxies, certificates); it is then yours to
    close.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._own_session = session is None
        self._session = session or requests.Session()
        self._sleep = sleep
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self._headers = {"User-Agent": f"internvl-queue-client/{__version__}"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    # -- the API --------------------------------------------------------------------------------
    def submit(
        self,
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
    ) -> Job:
        """Queue a job (``POST /v1/jobs``) and return it as accepted, usually ``queued``.

        ``images``: paths, bytes or PIL images (PNG-encoded), image URLs (a str starting with
        ``http://`` or ``https://``, or ``{"url": ...}``: the API fetches them), or one of them
        alone. ``priority``: ``high``, ``normal`` or ``low`` (the job's lane). Options left
        None take the service's defaults. ``idempotency_key``: made for you when None; the same
        key is sent on every retry, so a retried submit never makes a second job.
        """
        call = submit_call(
            images,
            question,
            max_new_tokens=max_new_tokens,
            max_tiles=max_tiles,
            timeout_s=timeout_s,
            metadata=metadata,
            webhook_url=webhook_url,
            webhook_events=webhook_events,
            idempotency_key=idempotency_key,
            priority=priority,
        )
        return Job.from_api(parse_json(self._send(call).content))

    def get(self, job_id: str) -> Job:
        """The job as it is now (``GET /v1/jobs/<id>``)."""
        return Job.from_api(parse_json(self._send(read_call(job_id)).content))

    def wait(self, job: Job | str, timeout: float | None = None) -> Job:
        """The job once finished (succeeded, failed or canceled), by long polls.

        ``job``: its id, or the ``Job`` in hand (then it is not read first). ``timeout``:
        seconds; None waits until the job's own deadline (``timeout_s``) has passed by
        ``WAIT_MARGIN_S``, by which time it has ended if any worker runs. Raises
        ``WaitTimeout`` (with the job as last seen) when it runs out. Once the job was read,
        an API that stops answering (a restart, a Redis outage) is polled again until then.
        """
        started = time.monotonic()
        if isinstance(job, str):
            job = self.get(job)
        if timeout is None:
            timeout = job_deadline_s(job, time.time())
        return self._wait_until(job, started + timeout)

    def run(
        self,
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
        wait_timeout: float | None = None,
    ) -> Job:
        """``submit`` then ``wait``: the succeeded job (``job.result.answer``).

        Raises ``JobFailed`` if the job failed or was canceled, ``WaitTimeout`` if it had not
        finished after ``wait_timeout`` seconds (None: its own deadline plus a margin, counted
        from the submit). The other arguments are ``submit``'s.
        """
        started = time.monotonic()
        job = self.submit(
            images,
            question,
            max_new_tokens=max_new_tokens,
            max_tiles=max_tiles,
            timeout_s=timeout_s,
            metadata=metadata,
            webhook_url=webhook_url,
            webhook_events=webhook_events,
            idempotency_key=idempotency_key,
            priority=priority,
        )
        timeout = wait_timeout
        if timeout is None:
            timeout = float(job.params.get("timeout_s", 0)) + WAIT_MARGIN_S
        job = self._wait_until(job, started + timeout)
        if job.status is not JobStatus.SUCCEEDED:
            raise JobFailed(job)
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a job (``POST /v1/jobs/<id>/cancel``): a queued one is ``canceled`` at once;
        a running one keeps running until its worker stops it (``cancel_requested_at`` set).
        A finished job raises ``Conflict`` (``job_already_finished``)."""
        try:
            return Job.from_api(parse_json(self._send(cancel_call(job_id)).content))
        except Conflict as exc:
            # A retried cancel whose first attempt went through finds the job canceled: that
            # is this call's own outcome, not a conflict.
            if exc.code == "job_already_finished" and exc.retried:
                job = self.get(job_id)
                if job.status is JobStatus.CANCELED:
                    return job
            raise

    def list_jobs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        created_after: datetime | float | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Iterator[JobPage]:
        """Your jobs, newest first, a page at a time (``GET /v1/jobs``), until the last page.

        ``status``: only jobs in this state, or these states. ``created_after``: only jobs
        created later (a timezone-aware ``datetime``, unix seconds, or a job's ``created_at``
        text, as the API writes it, to the millisecond). ``limit``: jobs per page (1..100, the
        API's default 20). ``cursor``: go on from a page's ``next_cursor`` kept earlier.
        Each page is fetched as the iteration reaches it. With a status filter a page may hold
        fewer jobs than ``limit``, or none: the API looks at a bounded number per request.
        """
        while True:
            call = list_call(status=status, created_after=created_after, limit=limit, cursor=cursor)
            page = JobPage.from_api(parse_json(self._send(call).content))
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def submit_batch(
        self,
        requests: Iterable[Mapping[str, Any]],
        *,
        all_or_nothing: bool = False,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """Queue many jobs in one request (``POST /v1/batches``) and return the batch.

        ``requests``: dicts of a job's JSON fields plus a ``custom_id`` (unique in the batch),
        e.g. ``{"custom_id": "p-1", "question": "...", "images": ["a.jpg"]}``; ``images`` as for
        ``submit``. An invalid line is listed in ``batch.errors`` and the others run; with
        ``all_or_nothing`` one invalid line refuses the batch (``ValidationFailed``,
        ``batch_invalid``). Sent with an ``Idempotency-Key``, so it is retried like ``submit``
        (on ``429``/``503`` and when no answer came): a retry gets the one batch, whole.
        """
        call = batch_submit_call(
            requests,
            all_or_nothing=all_or_nothing,
            webhook_url=webhook_url,
            metadata=metadata,
            idempotency_key=idempotency_key,
        )
        return Batch.from_api(parse_json(self._send(call).content))

    def get_batch(self, batch_id: str) -> Batch:
        """The batch as it is now (``GET /v1/batches/<id>``), its counts exact."""
        return Batch.from_api(parse_json(self._send(batch_call(batch_id)).content))

    def batch_results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The batch's result lines in input order (``GET /v1/batches/<id>/results``): dicts with
        ``index``, ``custom_id``, ``job_id``, ``status``, ``result``, ``error``. Readable while
        the batch runs (pending lines are ``queued`` or ``running``); final once it finished."""
        return result_lines(self._send(batch_results_call(batch_id)).content)

    def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel what has not run (``POST /v1/batches/<id>/cancel``); running jobs are asked to
        stop, so the batch may still be ``running`` for a moment. A finished batch raises
        ``Conflict`` (``batch_already_finished``)."""
        try:
            return Batch.from_api(parse_json(self._send(batch_cancel_call(batch_id)).content))
        except Conflict as exc:
            # A retried cancel whose first attempt went through: this call's own outcome.
            if exc.code == "batch_already_finished" and exc.retried:
                batch = self.get_batch(batch_id)
                if batch.status == "canceled":
                    return batch
            raise

    def deliveries(self, job_id: str) -> list[Delivery]:
        """Every webhook attempt made for the job, oldest first."""
        body = parse_json(self._send(deliveries_call(job_id)).content)
        return [Delivery.from_api(item) for item in body["deliveries"]]

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- sending --------------------------------------------------------------------------------
    def _wait_until(self, job: Job, deadline: float) -> Job:
        while not job.is_finished:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"job {job.id} is still {job.status} after the wait", job)
            reply = self._send(read_call(job.id, min(left, POLL_S)), deadline=deadline)
            job = Job.from_api(parse_json(reply.content))
            pause = retry_after_of(reply.headers)  # the API could not hold the poll: come back
            if pause and not job.is_finished:
                self._sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
        return job

    def _send(self, call: Call, *, deadline: float | None = None) -> requests.Response:
        """The reply to ``call`` (2xx), retried as ``self.retry`` says; or the typed error.

        With ``deadline`` (monotonic), retries go on until then instead of ``retry.attempts``.
        """
        attempts = Attempts(self.retry, self.base_url, self.timeout, deadline=deadline)
        while True:
            try:
                reply = self._session.request(
                    call.method,
                    f"{self.base_url}{call.path}",
                    params=call.params,
                    headers={**self._headers, **call.headers},
                    data=call.data,
                    files=call.files,
                    json=call.json,
                    timeout=(self.timeout, self.timeout + call.wait_s),
                    allow_redirects=False,
                )
            except _NO_ANSWER as exc:
                timed_out = isinstance(exc, requests.Timeout)
                pause = attempts.after_no_answer(timed_out=timed_out, repeatable=call.repeatable)
            except requests.RequestException as exc:  # a bad URL: no retry can help
                raise ClientError(f"cannot send a request to {self.base_url!r}: {exc}") from None
            else:
                if reply.status_code < 300:
                    return reply
                pause = attempts.after_reply(reply.status_code, reply.content, reply.headers)
            self._sleep(pause)
