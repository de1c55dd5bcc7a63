"""The per-owner job index on a real Redis: walks by position, ties, filters, bounded scans,
and entries that leave with their records."""

from __future__ import annotations

import time
from dataclasses import replace

import redis

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.job_index import JobIndex, JobPage, created_floor
from internvl_queue.core.job_listing import ListQuery
from internvl_queue.core.keys import job_key, owner_jobs_key
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore

PARAMS = JobParams(max_new_tokens=8, max_tiles=2)


def _job(owner: str = "k1", created_at: float | None = None) -> Job:
    job = Job.new("what?", PARAMS, image_count=1, owner=owner)
    return job if created_at is None else replace(job, created_at=created_at)


def _walk(index: JobIndex, owner: str, query: ListQuery) -> tuple[list[str], list[JobPage]]:
    pages = [index.page(owner, query)]
    while pages[-1].next is not None:
        assert len(pages) < 100, "the walk does not end"
        pages.append(index.page(owner, replace(query, after=pages[-1].next)))
    return [job.id for page in pages for job in page.jobs], pages


def test_jobs_created_at_the_same_moment_are_each_listed_once(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=100)
    now = time.time()
    jobs = [store.create(_job(created_at=now - i // 4), [b"i"]) for i in range(12)]
    ids, pages = _walk(JobIndex(redis_client), "k1", ListQuery(limit=3))
    newest_first = sorted(jobs, key=lambda job: (job.created_at, job.id), reverse=True)
    assert ids == [job.id for job in newest_first]
    assert [len(page.jobs) for page in pages] == [3, 3, 3, 3]


def test_a_filter_that_matches_few_jobs_scans_a_bounded_number_per_page(
    redis_client: redis.Redis,
) -> None:
    store = JobStore(redis_client, retention_s=100)
    jobs = [store.create(_job(created_at=1000.0 + i), [b"i"]) for i in range(25)]
    for job in (jobs[3], jobs[17]):
        store.cancel(job.id)
    index = JobIndex(redis_client, scan_limit=10)
    ids, pages = _walk(index, "k1", ListQuery(limit=5, statuses=frozenset({JobStatus.CANCELED})))
    assert ids == [jobs[17].id, jobs[3].id]
    # 25 entries, 10 looked at a page: three pages, the second one empty but not the last.
    assert [len(page.jobs) for page in pages] == [1, 0, 1]


def test_entries_of_expired_records_leave_the_index(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=100)
    kept, expiring = (store.create(_job(), [b"i"]) for _ in range(2))
    redis_client.pexpire(job_key(expiring.id), 1)  # its retention ran out
    while redis_client.exists(job_key(expiring.id)):
        time.sleep(0.01)
    page = JobIndex(redis_client).page("k1", ListQuery())
    assert [job.id for job in page.jobs] == [kept.id]
    assert redis_client.zscore(owner_jobs_key("k1"), expiring.id) is None
    assert redis_client.zscore(owner_jobs_key("k1"), kept.id) is not None


def test_a_new_job_trims_entries_no_record_can_outlive(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=100)
    ancient = store.create(_job(created_at=time.time() - 201), [b"i"])
    recent = store.create(_job(created_at=time.time() - 150), [b"i"])
    store.create(_job(), [b"i"])
    key = owner_jobs_key("k1")
    assert redis_client.zscore(key, ancient.id) is None
    assert redis_client.zscore(key, recent.id) is not None
    assert 0 < redis_client.ttl(key) <= 201


def test_only_the_owners_jobs_are_in_its_index(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=100)
    mine = store.create(_job("k1"), [b"i"])
    store.create(_job("k2"), [b"i"])
    opened = store.create(_job(""), [b"i"])
    index = JobIndex(redis_client)
    assert [job.id for job in index.page("k1", ListQuery()).jobs] == [mine.id]
    assert [job.id for job in index.page("", ListQuery()).jobs] == [opened.id]


def test_created_after_compares_at_the_millisecond_the_api_shows() -> None:
    assert created_floor(1000.123) == (1000.124 - 0.5e-6)
    assert created_floor(1000.1239) == (1000.124 - 0.5e-6)


def test_queued_jobs_carry_their_queue_position(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, retention_s=100)
    first, second = (store.create(_job(), [b"i"]) for _ in range(2))
    store.cancel(first.id)
    page = JobIndex(redis_client).page("k1", ListQuery())
    assert page.queue_positions == {second.id: 1}
