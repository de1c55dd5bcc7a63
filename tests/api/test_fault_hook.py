"""The test-only fault hook (``X-Test-Fault: kill-api-at=<step>``) on a real ``internvl-queue api``:
it kills the process handling the submit only where ``INTERNVL_TEST_FAULTS=1``, and gunicorn
starts another, so the API answers again."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import requests

from internvl_queue.core.keys import queued_key
from tests.api.api_process import ApiProcess
from tests.images import photo

FORM = {"question": "What is in the picture?"}


def _submit(api: ApiProcess, step: str) -> requests.Response:
    return requests.post(
        f"{api.url}/v1/jobs",
        data=FORM,
        files=[("image", ("a.jpg", photo(64, 48, seed=1), "image/jpeg"))],
        headers={"X-Test-Fault": f"kill-api-at={step}"},
        timeout=30,
    )


@pytest.mark.parametrize("faults_on", [True, False])
def test_the_fault_header_kills_the_api_only_where_faults_are_on(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, faults_on: bool
) -> None:
    env = {"INTERNVL_TEST_FAULTS": "1"} if faults_on else {}
    api = ApiProcess(redis_url, tmp_path / "api.log", **env)
    try:
        api.wait_ready()
        if not faults_on:
            reply = _submit(api, "before-store")
            assert reply.status_code == 202, reply.text
            assert redis_client.zcard(queued_key()) == 1
            return
        with pytest.raises(requests.ConnectionError):
            _submit(api, "before-store")
        assert redis_client.zcard(queued_key()) == 0  # killed before anything was stored
        api.wait_ready()  # gunicorn's master started another worker process
        assert api.process.poll() is None
        assert "test fault: killing API process" in api.log()
        with pytest.raises(requests.ConnectionError):
            _submit(api, "after-store")
        assert redis_client.zcard(queued_key()) == 1  # this one was stored before the kill
        api.wait_ready()
    finally:
        api.stop()
