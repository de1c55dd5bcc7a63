"""The reapers settle batches that nobody reads: one whose API process died while storing it (and
whose caller never retried) is cut short, one whose last job's process died before it finished
the batch is finished; either way its webhook event is staged exactly once. A real Redis; the
time that has passed is written into the records (a storer's lease, a reaper's next look)."""

from __future__ import annotations

import json
import time

import redis

from internvl_queue.core.batches import (
    CUT_SHORT_AFTER_S,
    RECHECK_S,
    Batch,
    BatchFence,
    BatchStore,
)
from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.keys import batch_key, event_key, outbox_key, unsettled_batches_key
from internvl_queue.core.store import JobStore
from internvl_queue.reaper import Reaper

PARAMS = JobParams(max_new_tokens=8, max_tiles=1)
HOOK = "https://example.com/hook"


def _stores(client: redis.Redis) -> tuple[JobStore, BatchStore, Reaper]:
    jobs = JobStore(client, retention_s=600)
    batches = BatchStore(client, retention_s=600, event_ttl_s=600)
    reaper = Reaper(jobs, lambda job_id, queue: None, lease_s=30, queue="batch-reaper-test")
    return jobs, batches, reaper


def _storing_batch(
    jobs: JobStore, batches: BatchStore, lines: int, stored: int
) -> tuple[Batch, BatchFence]:
    """A batch of ``lines`` jobs whose storer wrote ``stored`` of them (and its fence)."""
    batch = Batch.new("", total=lines, jobs=lines, errors=[], webhook_url=HOOK)
    made = [
        Job.new(f"what is {i}?", PARAMS, image_count=1, batch_id=batch.id) for i in range(lines)
    ]
    batch, fence = batches.create(batch, [job.id for job in made])
    assert fence is not None
    jobs.create_many([(job, [b"image"]) for job in made[:stored]], chunk=1, fence=fence)
    return batch, fence


def _as_if_time_passed(client: redis.Redis, batch_id: str, seconds: float) -> None:
    """The storer's lease ran out ``seconds`` ago, and the reapers' look at it is due."""
    client.hset(batch_key(batch_id), "storing_until", json.dumps(time.time() - seconds))
    client.zadd(unsettled_batches_key(), {batch_id: 0})


def _batch_events(client: redis.Redis, batch_id: str) -> list[str]:
    events = [client.hgetall(event_key(e.decode())) for e in client.zrange(outbox_key(), 0, -1)]
    return [e[b"type"].decode() for e in events if e.get(b"job_id") == batch_id.encode()]


def test_a_batch_abandoned_while_storing_is_cut_short_by_a_reaper(
    redis_client: redis.Redis,
) -> None:
    jobs, batches, reaper = _stores(redis_client)
    batch, _ = _storing_batch(jobs, batches, lines=5, stored=2)  # then its storer died
    assert redis_client.zscore(unsettled_batches_key(), batch.id) is not None

    # Within the grace a retry has, a reaper leaves it alone and looks again later.
    _as_if_time_passed(redis_client, batch.id, CUT_SHORT_AFTER_S / 2)
    assert reaper.reap_once().batches == 0
    left = batches.get(batch.id, settle=False)
    assert left is not None and left.storing_until is not None and not left.cut_short
    next_look = redis_client.zscore(unsettled_batches_key(), batch.id)
    assert next_look is not None and next_look > time.time() + RECHECK_S / 2

    _as_if_time_passed(redis_client, batch.id, CUT_SHORT_AFTER_S + 1)
    assert reaper.reap_once().batches == 1
    cut = batches.get(batch.id, settle=False)
    assert cut is not None and cut.cut_short and cut.storing_until is None
    assert (cut.jobs, cut.pending) == (2, 2)  # the two it stored still run
    assert redis_client.zscore(unsettled_batches_key(), batch.id) is not None  # not terminal yet
    assert _batch_events(redis_client, batch.id) == []

    # A second reaper at the same moment (or a read) finds nothing more to do.
    redis_client.zadd(unsettled_batches_key(), {batch.id: 0})
    assert reaper.reap_once().batches == 0


def test_a_batch_left_unfinished_by_its_last_job_is_finished_once(
    redis_client: redis.Redis,
) -> None:
    jobs, batches, reaper = _stores(redis_client)
    batch, fence = _storing_batch(jobs, batches, lines=3, stored=3)
    assert batches.finish_storing(fence, {}) is not None
    # Then every job finished, but the process that counted the last one died before it
    # finished the batch (core/batches.py, step 3): nothing pending, not terminal.
    redis_client.hset(batch_key(batch.id), "pending", 0)
    redis_client.zadd(unsettled_batches_key(), {batch.id: 0})

    assert reaper.reap_once().batches == 1
    done = batches.get(batch.id, settle=False)
    assert done is not None and done.status.value == "completed" and not done.cut_short
    assert _batch_events(redis_client, batch.id) == ["batch.completed"]
    assert redis_client.zscore(unsettled_batches_key(), batch.id) is None  # forgotten

    redis_client.zadd(unsettled_batches_key(), {batch.id: 0})  # a stale look
    assert reaper.reap_once().batches == 0
    assert _batch_events(redis_client, batch.id) == ["batch.completed"]
    assert redis_client.zscore(unsettled_batches_key(), batch.id) is None


def test_a_batch_that_expired_is_forgotten(redis_client: redis.Redis) -> None:
    jobs, batches, reaper = _stores(redis_client)
    batch, _ = _storing_batch(jobs, batches, lines=2, stored=1)
    redis_client.delete(batch_key(batch.id))
    redis_client.zadd(unsettled_batches_key(), {batch.id: 0})
    assert reaper.reap_once().batches == 0
    assert redis_client.zscore(unsettled_batches_key(), batch.id) is None
