"""A worker whose GPU dies steps aside: real worker processes, a real Redis, one named fake per
failure mode at the GPU edge (tests/worker/faulty_gpu_worker.py). The worker stops taking jobs,
shows itself ``defunct``, hands the jobs it held back to the queue (none is failed) and exits
with status 3 for its supervisor; a healthy worker then answers every one of them."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from internvl_queue.core.workers import WorkerInfo, WorkerRegistry, WorkerState
from internvl_queue.queue import RUN_JOB_TASK, create_celery
from tests.conftest import worker_env
from tests.images import photo

EXIT_DEFUNCT = 3


def _start(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, *(["worker"] if module == "internvl_queue" else [])],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _entry(registry: WorkerRegistry, pid: int) -> WorkerInfo | None:
    return next((w for w in registry.live() if w.pid == pid), None)


def _wait_ready(registry: WorkerRegistry, worker: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while (info := _entry(registry, worker.pid)) is None or info.state is not WorkerState.READY:
        assert worker.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, "the worker did not get ready"
        time.sleep(0.2)


@pytest.mark.parametrize("fault", ["sticky_cuda_error", "hang"])
def test_a_worker_whose_gpu_dies_hands_its_jobs_back_and_exits(
    settings: Settings, redis_client: redis.Redis, tiny_model_dir: Path, tmp_path: Path, fault: str
) -> None:
    assert settings.model == str(tiny_model_dir)
    queue = f"defunct-{fault}"
    ours = replace(settings, queue_name=queue)
    env = {
        **worker_env(ours),
        "INTERNVL_QUEUE": queue,
        "INTERNVL_ENGINE_STALL_S": "2",  # the watchdog, compressed
        "INTERNVL_MAX_BATCH_JOBS": "2",
        "INTERNVL_WORKER_CONCURRENCY": "4",
    }
    registry = WorkerRegistry(redis_client)
    store = JobStore.from_settings(redis_client, ours)
    celery = create_celery(ours)
    log = tmp_path / "worker.log"
    try:
        faulty = _start(
            "tests.worker.faulty_gpu_worker",
            {**env, "FAKE_GPU": fault, "FAKE_GPU_AFTER": "1"},
            log,
        )
        _wait_ready(registry, faulty, log)
        jobs = [
            store.create(
                Job.new(
                    f"q{i}", JobParams(max_new_tokens=4, max_tiles=1), image_count=1, queue=queue
                ),
                [photo(40, 40, seed=i)],
            )
            for i in range(8)
        ]
        for job in jobs:
            celery.send_task(RUN_JOB_TASK, args=[job.id], queue=queue)

        assert faulty.wait(90) == EXIT_DEFUNCT, log.read_text()[-4000:]
        # Listed as defunct, with the reason, after it exited; it failed nothing.
        defunct = _entry(registry, faulty.pid)
        assert defunct is not None and defunct.state is WorkerState.DEFUNCT
        expected = "illegal memory access" if fault == "sticky_cuda_error" else "no progress"
        assert defunct.error and expected in defunct.error
        records = [store.get(job.id) for job in jobs]
        answered = [r for r in records if r and r.status is JobStatus.SUCCEEDED]
        assert defunct.jobs_failed == 0 and defunct.jobs_succeeded == len(answered) < 8
        assert all(r and not r.status.is_terminal for r in records if r not in answered)
        # Every job it did not answer is back in the queue, once.
        assert redis_client.llen(queue) == 8 - len(answered)

        healthy = _start("internvl_queue", env, log)
        try:
            deadline = time.monotonic() + 120
            while not all((r := store.get(job.id)) and r.status.is_terminal for job in jobs):
                assert healthy.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, "the handed-back jobs were not answered"
                time.sleep(0.2)
            assert [store.get(job.id).status for job in jobs] == [JobStatus.SUCCEEDED] * 8  # type: ignore[union-attr]
            time.sleep(3 * settings.heartbeat_interval_s)
            info = _entry(registry, healthy.pid)
            assert info is not None
            assert (info.jobs_succeeded, info.jobs_failed) == (8 - len(answered), 0)
            print(
                f"\n{fault}: {len(answered)} answered before the fault, "
                f"{8 - len(answered)} handed back and answered by a healthy worker"
            )
        finally:
            healthy.terminate()
            healthy.wait(60)
    finally:
        celery.close()
