"""Two real CPU workers with preprocessing children, a burst larger than their concurrency: the
thread count stays bounded (not concurrency x cores), a 2 000-emoji question fails alone with
``prompt_too_long`` beside ordinary jobs with bounded memory, and SIGKILLed workers leave no
child behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from internvl_queue.core.workers import WorkerRegistry
from internvl_queue.queue import RUN_JOB_TASK, create_celery
from internvl_queue.worker.threads import thread_count
from tests.conftest import worker_env
from tests.images import photo

QUEUE = "limits"
CONCURRENCY = 24


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(pid)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def two_workers(
    redis_server_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[subprocess.Popen[bytes]]]:
    settings = Settings(redis_url=redis_server_url, model=str(tiny_model_dir), device="cpu")
    env = {
        **worker_env(settings),
        "INTERNVL_QUEUE": QUEUE,
        "INTERNVL_WORKER_CONCURRENCY": str(CONCURRENCY),
    }
    log = tmp_path_factory.mktemp("limits") / "workers.log"
    with log.open("ab") as out:
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "internvl_queue", "worker"],
                # One with the GPU workers' pool of preprocessing processes, one preparing in
                # its own process (the CPU workers' default).
                env={**env, "INTERNVL_PREPROCESS_PROCESSES": processes},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            for processes in ("2", "0")
        ]
    registry = WorkerRegistry(redis.Redis.from_url(redis_server_url))
    deadline = time.monotonic() + 180
    while {w.pid for w in registry.ready()} < {w.pid for w in workers}:
        assert all(w.poll() is None for w in workers), log.read_text()[-4000:]
        assert time.monotonic() < deadline, "workers not ready"
        time.sleep(0.3)
    registry.redis.close()
    yield workers
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(60)


def _submit(store: JobStore, celery: object, question: str, seed: int) -> Job:
    job = store.create(
        Job.new(question, JobParams(max_new_tokens=4, max_tiles=2), image_count=1),
        [photo(64, 48, seed=seed)],
    )
    celery.send_task(RUN_JOB_TASK, args=[job.id], queue=QUEUE)  # type: ignore[attr-defined]
    return job


def _wait_all(store: JobStore, jobs: list[Job], sample: object = None) -> list[Job]:
    deadline = time.monotonic() + 240
    while True:
        if callable(sample):
            sample()
        records = [store.get(job.id) for job in jobs]
        if all(r is not None and r.status.is_terminal for r in records):
            return records  # type: ignore[return-value]
        assert time.monotonic() < deadline, "jobs did not finish"
        time.sleep(0.1)


def test_threads_stay_bounded_under_a_burst_larger_than_the_concurrency(
    two_workers: list[subprocess.Popen[bytes]], settings: Settings, redis_client: redis.Redis
) -> None:
    ours = replace(settings, queue_name=QUEUE)
    store, celery = JobStore.from_settings(redis_client, ours), create_celery(ours)
    peak = {w.pid: 0 for w in two_workers}
    child_peak = 0

    def sample() -> None:
        nonlocal child_peak
        for worker in two_workers:
            peak[worker.pid] = max(peak[worker.pid], thread_count(worker.pid))
            for child in _children(worker.pid):
                if _alive(child):
                    child_peak = max(child_peak, thread_count(child))

    try:
        jobs = [_submit(store, celery, f"Question {i}?", i) for i in range(3 * CONCURRENCY)]
        records = _wait_all(store, jobs, sample)
    finally:
        celery.close()
    assert [r.status for r in records] == [JobStatus.SUCCEEDED] * len(jobs)
    cores = os.cpu_count() or 1
    # Task threads (one per concurrent job) + a fixed set (engine, uploader, preprocessing,
    # heartbeat, cancels, Celery's own) + a few intra-op pools; not one pool per task thread.
    bound = CONCURRENCY + 2 * cores + 16
    heartbeats = [w for w in WorkerRegistry(redis_client).live() if w.pid in peak]
    print(
        f"\nthreads at peak: workers {sorted(peak.values())} (bound {bound}, concurrency "
        f"{CONCURRENCY}, {cores} cores), preprocessing children {child_peak}; heartbeats "
        f"report {sorted(w.threads for w in heartbeats)}"
    )
    assert max(peak.values()) <= bound
    assert 0 < child_peak <= 4  # main thread, the parent watcher, the pool's queue feeder
    assert all(0 < w.threads <= bound for w in heartbeats)


def test_a_2000_emoji_question_fails_alone_and_memory_stays_bounded(
    two_workers: list[subprocess.Popen[bytes]], settings: Settings, redis_client: redis.Redis
) -> None:
    ours = replace(settings, queue_name=QUEUE)
    store, celery = JobStore.from_settings(redis_client, ours), create_celery(ours)
    before = {w.pid: _rss_mb(w.pid) for w in two_workers}
    peak = dict(before)

    def sample() -> None:
        for worker in two_workers:
            peak[worker.pid] = max(peak[worker.pid], _rss_mb(worker.pid))

    try:
        jobs = [_submit(store, celery, f"Ordinary {i}?", 100 + i) for i in range(7)]
        long = _submit(store, celery, "😀" * 2000, 99)
        records = _wait_all(store, [*jobs, long], sample)
    finally:
        celery.close()
    assert [r.status for r in records[:7]] == [JobStatus.SUCCEEDED] * 7
    failed = records[7]
    assert failed.status is JobStatus.FAILED and failed.error is not None
    assert failed.error["code"] == "prompt_too_long"
    assert "INTERNVL_MAX_QUESTION_TOKENS" in failed.error["message"]
    growth = {pid: peak[pid] - before[pid] for pid in before}
    print(
        f"\nworker RSS before {[round(v) for v in before.values()]} MB, peak "
        f"{[round(v) for v in peak.values()]} MB under the long question"
    )
    assert max(growth.values()) < 200


def test_sigkilled_workers_leave_no_preprocessing_child(
    two_workers: list[subprocess.Popen[bytes]],
) -> None:
    children = [c for w in two_workers for c in _children(w.pid) if _alive(c)]
    assert len(children) >= 2  # the first worker's two preprocessing processes
    for worker in two_workers:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    deadline = time.monotonic() + 5
    while alive := [c for c in children if _alive(c)]:
        assert time.monotonic() < deadline, f"children {alive} outlived their worker"
        time.sleep(0.05)
