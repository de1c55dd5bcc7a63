"""A real ``internvl-queue api`` (gunicorn) whose jobs go to the suite's shared real worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from internvl_queue.client import Client
from internvl_queue.core.settings import Settings
from tests.api.api_process import ApiProcess
from tests.conftest import WorkerProcess

DEFAULT_MAX_NEW_TOKENS = 16


@pytest.fixture
def api(worker: WorkerProcess, settings: Settings, tmp_path: Path) -> Iterator[ApiProcess]:
    """A real API whose jobs go to the shared worker."""
    process = ApiProcess(
        settings.redis_url,
        tmp_path / "api.log",
        INTERNVL_QUEUE=settings.queue_name,
        INTERNVL_DEFAULT_MAX_NEW_TOKENS=str(DEFAULT_MAX_NEW_TOKENS),
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(api: ApiProcess) -> Iterator[Client]:
    with Client(api.url, api_key="") as made:
        yield made
