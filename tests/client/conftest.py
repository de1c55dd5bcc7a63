"""A real ``internvl-queue api`` (gunicorn) whose jobs go to the suite's shared real worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from internvl_queue.client import Client
from tests.api.api_process import ApiProcess
from tests.conftest import WorkerProcess

DEFAULT_MAX_NEW_TOKENS = 16


@pytest.fixture
def api(worker: WorkerProcess, start_api: Callable[..., ApiProcess]) -> ApiProcess:
    """A real API whose jobs go to the shared worker."""
    return start_api(INTERNVL_DEFAULT_MAX_NEW_TOKENS=str(DEFAULT_MAX_NEW_TOKENS))


@pytest.fixture
def client(api: ApiProcess) -> Iterator[Client]:
    with Client(api.url, api_key="") as made:
        yield made
