"""The reapers and the priority lanes: a job sent again goes to its own lane, and the audit for
lost messages reads every lane of the queue. A real Redis, the service's own Celery app sending
real broker messages."""

from __future__ import annotations

import time

import redis
from celery import Celery

from internvl_queue import broker_layout as broker
from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.priority import Priority, lane_queue, lane_queues
from internvl_queue.core.settings import Settings
from internvl_queue.core.store import JobStore
from internvl_queue.queue import create_celery, send_run_job
from internvl_queue.reaper import Reaper

QUEUE = "lanes-reaper-test"
PARAMS = JobParams(max_new_tokens=8, max_tiles=1)


def _celery(client: redis.Redis) -> Celery:
    kwargs = client.connection_pool.connection_kwargs
    return create_celery(Settings(redis_url=f"redis://{kwargs['host']}:{kwargs['port']}/0"))


def _stored(store: JobStore, priority: Priority) -> Job:
    job = Job.new("what?", PARAMS, image_count=1, queue=QUEUE, priority=priority)
    return store.create(job, [b"image"])


def _waiting_ids(client: redis.Redis, queue: str) -> list[str | None]:
    found = [broker.task_of(e) for e in broker.waiting_envelopes(client, queue)]
    return [task[1] if task else None for task in found]


def test_a_job_sent_again_by_a_reaper_goes_to_its_own_lane(redis_client: redis.Redis) -> None:
    app = _celery(redis_client)
    store = JobStore(redis_client, retention_s=600)
    reaper = Reaper(
        store, lambda job_id, queue: send_run_job(app, job_id, queue), lease_s=30, queue=QUEUE
    )
    jobs = {priority: _stored(store, priority) for priority in Priority}
    for job in jobs.values():  # as after a lapsed lease or an orphaned message
        store.needs_dispatch(job.id, due=0)

    assert reaper.reap_once().dispatched == 3
    for priority, job in jobs.items():
        assert _waiting_ids(redis_client, lane_queue(QUEUE, priority)) == [job.id], priority
    app.close()


def test_the_audit_for_lost_messages_reads_every_lane(redis_client: redis.Redis) -> None:
    """A queued job whose message waits in its lane is not lost; one whose message is in no
    lane (a worker killed between taking it and recording it) is sent again, to its lane."""
    app = _celery(redis_client)
    store = JobStore(redis_client, retention_s=600)
    sent: list[tuple[str, str]] = []

    def dispatch(job_id: str, queue: str) -> None:
        sent.append((job_id, queue))
        send_run_job(app, job_id, queue)

    reaper = Reaper(store, dispatch, lease_s=0.05, queue=QUEUE)
    waiting_high, waiting_low, lost_high = (
        _stored(store, Priority.HIGH),
        _stored(store, Priority.LOW),
        _stored(store, Priority.HIGH),
    )
    for job in (waiting_high, waiting_low, lost_high):
        store.dispatched(job.id)
    for job in (waiting_high, waiting_low):
        send_run_job(app, job.id, lane_queue(QUEUE, job.priority))
    time.sleep(0.1)  # every message is now older than the reaper's lease

    report = reaper.reap_once()
    assert report.orphans == 1 and report.dispatched == 1
    assert sent == [(lost_high.id, f"{QUEUE}.high")]
    assert _waiting_ids(redis_client, f"{QUEUE}.high") == [lost_high.id, waiting_high.id]
    assert _waiting_ids(redis_client, f"{QUEUE}.low") == [waiting_low.id]
    assert lane_queues(QUEUE) == (f"{QUEUE}.high", QUEUE, f"{QUEUE}.low")
    app.close()
