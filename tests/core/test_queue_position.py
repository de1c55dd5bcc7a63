"""A queued job's place counts what its queue's workers take before it: the lanes above its own,
then its own lane by submission time; not other queues, not the lanes below. A real Redis."""

from __future__ import annotations

import redis

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.job_index import JobIndex
from internvl_queue.core.job_listing import ListQuery
from internvl_queue.core.keys import queued_lane_key
from internvl_queue.core.priority import Priority
from internvl_queue.core.store import JobStore

PARAMS = JobParams(max_new_tokens=8, max_tiles=1)
HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW


def _submit(store: JobStore, priority: Priority, queue: str = "main") -> Job:
    job = Job.new("what?", PARAMS, image_count=1, queue=queue, priority=priority)
    return store.create(job, [b"image"])


def test_a_job_counts_the_lanes_above_it_and_its_own_lane_before_it(
    redis_client: redis.Redis,
) -> None:
    store = JobStore(redis_client, retention_s=600)
    low_1, normal_1, low_2, high_1, normal_2 = (
        _submit(store, p) for p in (LOW, NORMAL, LOW, HIGH, NORMAL)
    )
    other_queue = _submit(store, HIGH, queue="other")  # other workers: counts for none of these
    places = {job.id: store.queue_position(job) for job in (low_1, normal_1, low_2, high_1)}
    places[normal_2.id] = store.queue_position(normal_2)
    assert places == {high_1.id: 1, normal_1.id: 2, normal_2.id: 3, low_1.id: 4, low_2.id: 5}
    assert store.queue_position(other_queue) == 1

    # The high job starts: everything behind it moves up; a lapsed lease puts it back first.
    claim = store.claim(high_1.id, max_attempts=3, worker="w", lease_s=0)
    assert claim.job is not None
    assert store.queue_position(high_1) is None
    assert [store.queue_position(j) for j in (normal_1, normal_2, low_1)] == [1, 2, 3]
    assert store.requeue_lapsed(high_1.id) is not None
    assert store.queue_position(high_1) == 1 and store.queue_position(low_2) == 5

    # A cancel takes a job out of its lane.
    store.cancel(normal_1.id)
    assert [store.queue_position(j) for j in (high_1, normal_2, low_1, low_2)] == [1, 2, 3, 4]

    # The listing shows the same places.
    page = JobIndex(redis_client).page("", ListQuery())
    assert page.queue_positions == {
        high_1.id: 1,
        normal_2.id: 2,
        low_1.id: 3,
        low_2.id: 4,
        other_queue.id: 1,
    }


def test_a_job_queued_before_lanes_were_indexed_is_ranked_among_all_queued_jobs(
    redis_client: redis.Redis,
) -> None:
    store = JobStore(redis_client, retention_s=600)
    older = _submit(store, NORMAL)
    _submit(store, HIGH, queue="other")
    # As a record written by a release before the lanes' sets: only in the overall queue.
    redis_client.zrem(queued_lane_key("main", NORMAL.value), older.id)
    assert store.queue_position(older) == 1
    newer = _submit(store, NORMAL)
    assert store.queue_position(newer) == 1  # the older job is in no lane set
