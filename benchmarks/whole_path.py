"""Whole-path benchmark: Redis + a real Celery worker process + submissions, W1 burst.

    python -m benchmarks.whole_path --model DIR --engine-json engine.json

Each job goes the way the API sends it: validated (``prepare_job``, the image fully decoded),
stored in Redis with its image, and dispatched as a Celery message carrying only its id; the worker
claims it, prepares it in a task thread, batches it on the GPU, stores the answer. The burst's
throughput (first submit to last stored answer) is compared with the engine alone (the figure
``benchmarks.engine_bench`` wrote to its JSON) and appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import redis

from benchmarks.engine_bench import NEW_TOKENS, QUESTION, RESULTS, W1, images_for
from internvl_queue.cli.redis_server import start_redis
from internvl_queue.core.keys import job_key
from internvl_queue.core.settings import Settings
from internvl_queue.core.store import JobStore
from internvl_queue.core.submission import Submission, prepare_job
from internvl_queue.core.workers import WorkerRegistry
from internvl_queue.worker.celery_app import RUN_JOB_TASK, create_celery


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--engine-json", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()

    engine_figures = json.loads(args.engine_json.read_text())
    server = start_redis(Path(tempfile.mkdtemp()) / "redis", persistent=False)
    settings = Settings(redis_url=server.url, model=args.model, heartbeat_interval_s=1.0)
    env = {
        **os.environ,
        "REDIS_URL": server.url,
        "INTERNVL_MODEL": args.model,
        "INTERNVL_HEARTBEAT_S": "1",
        "LOG_LEVEL": "WARNING",
    }
    print("starting the worker", flush=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "internvl_queue", "worker", "--loglevel", "WARNING"], env=env
    )
    client = redis.Redis.from_url(server.url)
    try:
        registry = WorkerRegistry(client)
        deadline = time.monotonic() + 300
        while not registry.live():
            assert worker.poll() is None and time.monotonic() < deadline, "worker did not start"
            time.sleep(0.5)
        store = JobStore(client, retention_s=3600)
        celery = create_celery(settings)
        images = images_for(W1)
        pool = ThreadPoolExecutor(args.threads)

        def submit(i: int) -> str:
            data = images[i % len(images)]
            job = prepare_job(
                Submission(question=QUESTION, images=[data], max_new_tokens=NEW_TOKENS), settings
            )
            store.create(job, [data])
            celery.send_task(RUN_JOB_TASK, args=[job.id], task_id=job.id, queue=settings.queue_name)
            return job.id

        def burst(jobs: int) -> tuple[float, list[str]]:
            started = time.perf_counter()
            ids = list(pool.map(submit, range(jobs)))
            remaining = set(ids)
            while remaining:
                pipe = client.pipeline(transaction=False)
                ordered = list(remaining)
                for job_id in ordered:
                    pipe.hget(job_key(job_id), "status")
                for job_id, status in zip(ordered, pipe.execute(), strict=True):
                    if status in (b"succeeded", b"failed", b"canceled"):
                        remaining.discard(job_id)
                time.sleep(0.01)
            return time.perf_counter() - started, ids

        print("worker ready; warming up", flush=True)
        burst(256)  # warm-up
        elapsed, ids = burst(args.jobs)
        jobs = [store.get(i) for i in ids]
        succeeded = [j for j in jobs if j is not None and j.status.value == "succeeded"]
        tokens = sum(j.result["usage"]["completion_tokens"] for j in succeeded if j.result)
        whole = args.jobs / elapsed
        engine = engine_figures["burst_W1"]["jobs_s"]
        batches = [j.result["batch_size"] for j in succeeded if j.result]
        row = (
            f"\n## Whole path, {engine_figures['device']}, "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n\n"
            "`python -m benchmarks.whole_path`: Redis + `internvl-queue worker` (Celery, threads "
            "pool) + validated submissions dispatched through Celery; W1 burst.\n\n"
            "| figure | value |\n|---|---|\n"
            f"| W1 burst, whole path ({args.jobs} jobs) | {whole:.1f} jobs/s |\n"
            f"| W1 burst, engine alone (same device, engine_bench) | {engine:.1f} jobs/s |\n"
            f"| whole path / engine alone | {whole / engine:.2f} |\n"
            f"| jobs succeeded | {len(succeeded)} of {args.jobs} |\n"
            f"| mean new tokens per job | {tokens / max(len(succeeded), 1):.1f} |\n"
            f"| mean batch size seen by jobs | {sum(batches) / max(len(batches), 1):.0f} |\n"
        )
        print(row)
        with RESULTS.open("a") as results:
            results.write(row)
    finally:
        worker.terminate()
        worker.wait(120)
        server.stop()


if __name__ == "__main__":
    main()
