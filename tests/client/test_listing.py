"""``Client.list_jobs`` and ``AsyncClient.list_jobs`` against a real API (HTTP, real Redis)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from internvl_queue.client import AsyncClient, Client, JobPage, JobStatus, ValidationFailed
from tests.images import photo

IMAGE = photo(32, 24, seed=3)


def test_pages_walk_every_job_newest_first_with_filters(live_api: str) -> None:
    with Client(live_api, api_key="") as client:
        ids = [client.submit(IMAGE, f"q{index}?").id for index in range(7)]
        canceled = client.cancel(ids[2])
        pages = list(client.list_jobs(limit=3))
        assert all(isinstance(page, JobPage) for page in pages)
        assert [len(page.jobs) for page in pages] == [3, 3, 1]
        assert [job.id for page in pages for job in page.jobs] == ids[::-1]
        assert pages[-1].next_cursor is None
        only = [job.id for page in client.list_jobs(status="canceled") for job in page.jobs]
        assert only == [canceled.id]
        several = client.list_jobs(status=[JobStatus.CANCELED, JobStatus.QUEUED], limit=100)
        assert len(next(several).jobs) == 7
        since = client.get(ids[4]).created_at
        newer = [job.id for page in client.list_jobs(created_after=since) for job in page.jobs]
        assert newer == [ids[6], ids[5]]
        resumed = client.list_jobs(limit=3, cursor=pages[0].next_cursor)
        assert [job.id for job in next(resumed).jobs] == [ids[3], ids[2], ids[1]]
        with pytest.raises(ValidationFailed) as refused:
            next(client.list_jobs(limit=500))
        assert refused.value.code == "invalid_parameter"
        with pytest.raises(ValueError, match="timezone"):
            next(client.list_jobs(created_after=datetime(2026, 1, 1)))


def test_the_async_client_walks_the_same_pages(live_api: str) -> None:
    async def walk() -> tuple[list[str], list[str]]:
        async with AsyncClient(live_api, api_key="") as client:
            ids = [(await client.submit(IMAGE, f"q{index}?")).id for index in range(5)]
            listed = [job.id async for page in client.list_jobs(limit=2) for job in page.jobs]
            return ids, listed

    ids, listed = asyncio.run(walk())
    assert listed == ids[::-1]
