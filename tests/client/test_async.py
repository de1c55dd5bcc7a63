"""``AsyncClient`` (httpx): the same retries and errors as ``Client`` at the scripted edge, the
reference answer through the real API and worker, and a clear error where httpx is missing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from internvl_queue.client import AsyncClient, JobFailed, JobStatus, NotFound
from internvl_queue.core.settings import Settings
from tests.api.api_process import ApiProcess
from tests.client.scripted_api import DROP, ScriptedApi, job_json, reply_json
from tests.images import photo
from tests.worker.reference import reference_answer

IMAGE = photo(32, 32, seed=1)


def test_a_503_then_a_dropped_reply_are_retried_with_the_same_key() -> None:
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    async def submit(url: str) -> JobStatus:
        async with AsyncClient(url, sleep=sleep) as client:
            return (await client.submit([IMAGE], "What is it?")).status

    busy = {"error": {"code": "queue_full", "message": "full"}}
    script = [reply_json(503, busy, **{"Retry-After": "3"}), DROP, reply_json(202, job_json())]
    with ScriptedApi(script) as api:
        assert asyncio.run(submit(api.url)) is JobStatus.QUEUED
    assert pauses[0] == 3.0 and len(pauses) == 2
    assert len({r.headers["idempotency-key"] for r in api.received}) == 1
    assert len(api.received) == 3


def test_run_raises_job_failed_and_a_404_is_typed() -> None:
    failed = job_json("failed", error={"code": "model_error", "message": "the model raised"})
    missing = {"error": {"code": "job_not_found", "message": "no job with id 'x'"}}
    script = [reply_json(202, job_json()), reply_json(200, failed), reply_json(404, missing)]

    async def run(url: str) -> None:
        async with AsyncClient(url) as client:
            with pytest.raises(JobFailed) as raised:
                await client.run([IMAGE], "What is it?")
            assert raised.value.code == "model_error"
            with pytest.raises(NotFound) as not_found:
                await client.get("x")
            assert (not_found.value.status, not_found.value.code) == (404, "job_not_found")

    with ScriptedApi(script) as api:
        asyncio.run(run(api.url))


def test_run_answers_as_the_reference(
    api: ApiProcess, tiny_model_dir: Path, settings: Settings
) -> None:
    image = photo(80, 60, seed=41)

    async def run() -> str:
        async with AsyncClient(api.url, api_key="") as client:
            job = await client.run([image], "What is in the picture?", max_new_tokens=6)
            assert job.result is not None
            return job.result.answer

    expected, _ = reference_answer(
        tiny_model_dir,
        [image],
        "What is in the picture?",
        max_new_tokens=6,
        max_tiles=settings.max_tiles,
    )
    assert expected and asyncio.run(run()) == expected


def test_without_httpx_async_client_says_how_to_get_it() -> None:
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "from internvl_queue.client import Client\n"
        "try:\n    from internvl_queue.client import AsyncClient\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install httpx" in done.stdout
