"""The durability wait (``INTERNVL_REDIS_MIN_REPLICAS``) on a real primary + replica and a real
API: a ``202`` comes only once the replica holds the job; a replica that does not answer makes a
submit ``503 not_durable`` with the job kept, and the retry with the same Idempotency-Key finds
that one job (``202`` once the replica took it), never a second."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from internvl_queue.core.keys import job_key
from tests.api.api_process import ApiProcess
from tests.images import photo
from tests.reliability.replicated_redis import ReplicatedRedis, replicated_redis

FORM = {"question": "What is in the picture?"}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[ReplicatedRedis]:
    with replicated_redis(tmp_path) as found:
        yield found


@pytest.fixture
def api(pair: ReplicatedRedis, tmp_path: Path) -> Iterator[ApiProcess]:
    process = ApiProcess(
        pair.primary.url,
        tmp_path / "api.log",
        INTERNVL_REDIS_MIN_REPLICAS="1",
        INTERNVL_REDIS_REPLICA_TIMEOUT_MS="1000",
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _submit(api: ApiProcess, seed: int, key: str | None = None) -> requests.Response:
    return requests.post(
        f"{api.url}/v1/jobs",
        data=FORM,
        files=[("image", ("a.jpg", photo(64, 48, seed=seed), "image/jpeg"))],
        headers={"Idempotency-Key": key} if key else {},
        timeout=30,
    )


def _job_ids(pair: ReplicatedRedis) -> set[str]:
    client = pair.primary_client()
    try:
        record = re.compile(rb"^iq:job:([^:]+)$")  # the job hashes, not their images
        found = (record.match(key) for key in client.scan_iter("iq:job:*"))
        return {match.group(1).decode() for match in found if match}
    finally:
        client.close()


def test_a_202_comes_once_the_replica_holds_the_job(pair: ReplicatedRedis, api: ApiProcess) -> None:
    replica = pair.replica_client()
    try:
        for seed in range(5):
            reply = _submit(api, seed)
            assert reply.status_code == 202, reply.text
            job_id = reply.json()["id"]
            # Read at once, no polling: the API answered only after WAIT saw the replica take it.
            assert replica.exists(job_key(job_id)) == 1
            assert replica.hget(job_key(job_id), "status") == b"queued"
    finally:
        replica.close()


def test_a_paused_replica_answers_503_not_durable_and_the_retry_finds_the_one_job(
    pair: ReplicatedRedis, api: ApiProcess
) -> None:
    with pair.replica_paused():
        refused = _submit(api, 1, key="order-42")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "not_durable"
        assert refused.headers["Retry-After"] == "1"
        kept = _job_ids(pair)
        assert len(kept) == 1  # stored on the primary all the same
        (job_id,) = kept
        assert job_id in refused.json()["error"]["message"]
        # Still paused: the retry finds the same job, and still cannot vouch for it.
        again = _submit(api, 1, key="order-42")
        assert again.status_code == 503, again.text
        assert again.json()["error"]["code"] == "not_durable"
        assert _job_ids(pair) == {job_id}
    accepted = _submit(api, 1, key="order-42")
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["id"] == job_id
    assert accepted.headers["Idempotency-Replayed"] == "true"
    assert _job_ids(pair) == {job_id}  # no second copy
    replica = pair.replica_client()
    try:
        assert replica.hget(job_key(job_id), "status") == b"queued"
    finally:
        replica.close()
