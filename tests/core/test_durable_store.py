"""``JobStore`` with a replica wait, on a real primary + replica: a new job and an outcome are
returned once the replica holds them; a paused replica gives ``NotDurable`` for a new job (kept
on the primary) and a logged warning for an outcome (stored, the worker goes on)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from internvl_queue.core.durability import NotDurable, ReplicaWait
from internvl_queue.core.idempotency import KeyAlreadyBound, KeyClaim
from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.keys import job_key
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import ClaimOutcome, JobStore
from tests.reliability.replicated_redis import ReplicatedRedis, replicated_redis

PARAMS = JobParams(max_new_tokens=8, max_tiles=2)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[ReplicatedRedis]:
    with replicated_redis(tmp_path) as found:
        yield found


@pytest.fixture
def clients(pair: ReplicatedRedis) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    primary, replica = pair.primary_client(), pair.replica_client()
    yield primary, replica
    primary.close()
    replica.close()


def _store(primary: redis.Redis, timeout_ms: int = 1000) -> JobStore:
    return JobStore(primary, retention_s=100, replica_wait=ReplicaWait(1, timeout_ms))


def _job() -> Job:
    return Job.new("what?", PARAMS, image_count=1)


def test_create_and_finish_return_once_the_replica_holds_them(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    primary, replica = clients
    store = _store(primary)
    job = store.create(_job(), [b"img"])
    assert replica.hget(job_key(job.id), "status") == b"queued"
    claim = store.claim(job.id, max_attempts=3)
    assert claim.outcome is ClaimOutcome.CLAIMED and claim.job is not None
    done = store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "a"})
    assert done is not None
    assert replica.hget(job_key(job.id), "status") == b"succeeded"


def test_create_many_returns_once_the_replica_holds_every_job(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    primary, replica = clients
    stored = _store(primary).create_many([(_job(), [b"img"]) for _ in range(7)], chunk=3)
    assert all(replica.exists(job_key(job.id)) for job in stored)


def test_a_paused_replica_makes_a_new_job_not_durable_but_kept(
    pair: ReplicatedRedis, clients: tuple[redis.Redis, redis.Redis]
) -> None:
    primary, replica = clients
    store = _store(primary, timeout_ms=200)
    with pair.replica_paused():
        with pytest.raises(NotDurable) as short:
            store.create(_job(), [b"img"])
        assert short.value.acked == 0
        job = short.value.stored
        assert store.get(job.id) == job  # on the primary
        with pytest.raises(NotDurable):
            store.confirm_durable()
    store.confirm_durable()  # the replica caught up: everything before is on it
    assert replica.hget(job_key(job.id), "status") == b"queued"


def test_an_outcome_the_replica_does_not_take_is_stored_and_logged(
    pair: ReplicatedRedis,
    clients: tuple[redis.Redis, redis.Redis],
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, replica = clients
    store = _store(primary, timeout_ms=100)
    job = store.create(_job(), [b"img"])
    claim = store.claim(job.id, max_attempts=3)
    assert claim.job is not None
    with pair.replica_paused(), caplog.at_level(logging.WARNING):
        done = store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "a"})
        assert done is not None and done.status is JobStatus.SUCCEEDED
        assert primary.hget(job_key(job.id), "status") == b"succeeded"
    assert "a failover now would run it again" in caplog.text
    store.confirm_durable()
    assert replica.hget(job_key(job.id), "status") == b"succeeded"


def test_a_key_bound_under_the_wait_refuses_the_second_job_and_stores_nothing(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    primary, replica = clients
    store = _store(primary)
    key = KeyClaim("iq:test-key", "fingerprint", 60)
    first = store.create(_job(), [b"img"], key=key)
    with pytest.raises(KeyAlreadyBound) as bound:
        store.create(_job(), [b"img"], key=key)
    assert bound.value.binding.job_id == first.id
    assert len(list(primary.scan_iter("iq:job:*:images"))) == 1  # the second was not written
    assert replica.exists("iq:test-key") == 1
