"""``AsyncClient``: ``Client`` for ``asyncio`` code, on ``httpx`` (not a dependency of the base
install: the ``async`` extra, or httpx itself). The same methods, retries
and errors, awaited; the requests themselves are built in ``calls.py`` for both.

    async with AsyncClient("http://127.0.0.1:8000") as client:
        job = await client.run(["examples/cat.jpg"], "What animal is this?")
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "internvl_queue.client.AsyncClient needs httpx, which the base install leaves out: "
        "pip install httpx (the package's async extra: pip install '.[async]' in a checkout), "
        "or use the synchronous Client"
    ) from exc

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
from .errors import ClientError, Conflict, JobFailed, WaitTimeout
from .images import ImageInput
from .job import Job, JobPage, JobStatus
from .retry import RetryPolicy
from .sync import API_KEY_ENV

__all__ = ["AsyncClient"]


class AsyncClient:
    """``Client``'s twin for ``asyncio``; ``client``: an ``httpx.AsyncClient`` of your own."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        retry: RetryPolicy | None = None,
        client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._own_client = client is None
        self._client = client or httpx.AsyncClient()
        self._sleep = sleep
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self._headers = {"User-Agent": f"internvl-queue-client/{__version__}"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    async def submit(
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
        """See ``Client.submit``."""
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
        return Job.from_api(parse_json((await self._send(call)).content))

    async def get(self, job_id: str) -> Job:
        return Job.from_api(parse_json((await self._send(read_call(job_id))).content))

    async def wait(self, job: Job | str, timeout: float | None = None) -> Job:
        """See ``Client.wait``."""
        started = time.monotonic()
        if isinstance(job, str):
            job = await self.get(job)
        if timeout is None:
            timeout = job_deadline_s(job, time.time())
        return await self._wait_until(job, started + timeout)

    async def run(
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
        """See ``Client.run``."""
        started = time.monotonic()
        job = await self.submit(
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
        job = await self._wait_until(job, started + timeout)
        if job.status is not JobStatus.SUCCEEDED:
            raise JobFailed(job)
        return job

    async def cancel(self, job_id: str) -> Job:
        """See ``Client.cancel``."""
        try:
            return Job.from_api(parse_json((await self._send(cancel_call(job_id))).content))
        except Conflict as exc:
            if exc.code == "job_already_finished" and exc.retried:
                job = await self.get(job_id)
                if job.status is JobStatus.CANCELED:
                    return job
            raise

    async def list_jobs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        created_after: datetime | float | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> AsyncIterator[JobPage]:
        """See ``Client.list_jobs``: ``async for page in client.list_jobs(): ...``."""
        while True:
            call = list_call(status=status, created_after=created_after, limit=limit, cursor=cursor)
            page = JobPage.from_api(parse_json((await self._send(call)).content))
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def submit_batch(
        self,
        requests: Iterable[Mapping[str, Any]],
        *,
        all_or_nothing: bool = False,
        webhook_url: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """See ``Client.submit_batch``."""
        call = batch_submit_call(
            requests,
            all_or_nothing=all_or_nothing,
            webhook_url=webhook_url,
            metadata=metadata,
            idempotency_key=idempotency_key,
        )
        return Batch.from_api(parse_json((await self._send(call)).content))

    async def get_batch(self, batch_id: str) -> Batch:
        return Batch.from_api(parse_json((await self._send(batch_call(batch_id))).content))

    async def batch_results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """See ``Client.batch_results``: the whole reply is read, then its lines iterated."""
        return result_lines((await self._send(batch_results_call(batch_id))).content)

    async def cancel_batch(self, batch_id: str) -> Batch:
        """See ``Client.cancel_batch``."""
        try:
            reply = await self._send(batch_cancel_call(batch_id))
            return Batch.from_api(parse_json(reply.content))
        except Conflict as exc:
            if exc.code == "batch_already_finished" and exc.retried:
                batch = await self.get_batch(batch_id)
                if batch.status == "canceled":
                    return batch
            raise

    async def deliveries(self, job_id: str) -> list[Delivery]:
        body = parse_json((await self._send(deliveries_call(job_id))).content)
        return [Delivery.from_api(item) for item in body["deliveries"]]

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _wait_until(self, job: Job, deadline: float) -> Job:
        while not job.is_finished:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"job {job.id} is still {job.status} after the wait", job)
            reply = await self._send(read_call(job.id, min(left, POLL_S)), deadline=deadline)
            job = Job.from_api(parse_json(reply.content))
            pause = retry_after_of(reply.headers)
            if pause and not job.is_finished:
                await self._sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
        return job

    async def _send(self, call: Call, *, deadline: float | None = None) -> httpx.Response:
        """See ``Client._send``."""
        attempts = Attempts(self.retry, self.base_url, self.timeout, deadline=deadline)
        while True:
            try:
                reply = await self._client.request(
                    call.method,
                    f"{self.base_url}{call.path}",
                    params=call.params,
                    headers={**self._headers, **call.headers},
                    data=call.data,
                    files=call.files,
                    json=call.json,
                    timeout=httpx.Timeout(self.timeout, read=self.timeout + call.wait_s),
                    follow_redirects=False,
                )
            except httpx.TransportError as exc:
                if isinstance(exc, httpx.UnsupportedProtocol):  # not an http(s) URL
                    message = f"cannot send a request to {self.base_url!r}: {exc}"
                    raise ClientError(message) from None
                timed_out = isinstance(exc, httpx.TimeoutException)
                pause = attempts.after_no_answer(timed_out=timed_out, repeatable=call.repeatable)
            else:
                if reply.status_code < 300:
                    return reply
                pause = attempts.after_reply(reply.status_code, reply.content, reply.headers)
            await self._sleep(pause)
