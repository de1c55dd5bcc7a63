"""Soak: thousands of jobs through the real HTTP API, a real worker and Redis (AOF), on the tiny
model; counts what came back and watches memory and Redis keys.

    python -m benchmarks.soak                 # 5 000 jobs
    python -m benchmarks.soak --jobs 500      # a quick run

Prints a table and appends it to benchmarks/RESULTS.md:
- succeeded / failed / lost (no terminal record) / duplicated (a job run more than once, or the
  worker's counters above the number of jobs);
- RSS of the API (gunicorn, every process), the worker and Redis, once the service is ready and
  once the jobs are done;
- Redis keys before, right after, and once the job records have expired (retention shortened).
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import redis
import requests
from PIL import Image

from internvl_queue.cli.redis_server import free_port, start_redis
from internvl_queue.core.keys import job_key
from internvl_queue.core.workers import WorkerRegistry
from internvl_queue.testing.tiny_model import make_tiny_model

RESULTS = Path(__file__).with_name("RESULTS.md")
_TERMINAL = {"succeeded", "failed", "canceled"}
# Retention (and the jobs' deadline, just under it) must outlast the backlog's wait: a record
# that expires while its job is still queued is a lost job to the caller.
DEFAULT_RETENTION_S = 300


def say(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _image(rng: random.Random) -> bytes:
    small = Image.new("RGB", (4, 4))
    small.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(16)])
    size = (rng.randrange(32, 200), rng.randrange(32, 200))
    buffer = io.BytesIO()
    small.resize(size).save(buffer, format=rng.choice(["JPEG", "PNG"]))
    return buffer.getvalue()


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn's workers, preprocessing children)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[parent].append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children[current])
    return found


def _user_keys(client: redis.Redis) -> int:
    return sum(1 for k in client.scan_iter(count=1000) if not k.startswith(b"_kombu.binding."))


def soak(jobs: int, threads: int, workdir: Path, retention_s: int) -> dict[str, object]:
    model = make_tiny_model(workdir / "tiny-internvl")
    server = start_redis(workdir / "redis", persistent=True)
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": server.url,
        "INTERNVL_MODEL": str(model),
        "INTERNVL_DEVICE": "cpu",
        "INTERNVL_AUTH": "open",
        "INTERNVL_HEARTBEAT_S": "1",
        "INTERNVL_JOB_RETENTION_S": str(retention_s),
        "INTERNVL_IDEMPOTENCY_TTL_S": str(retention_s),
        "INTERNVL_DEFAULT_TIMEOUT_S": str(retention_s - 10),
        "INTERNVL_MAX_TIMEOUT_S": str(retention_s - 10),
        "INTERNVL_VISIBILITY_TIMEOUT_S": str(retention_s * 2),
        "INTERNVL_MAX_QUEUED_JOBS": "0",
        "INTERNVL_RATE_LIMIT_JOBS": "0",
        "WEBHOOK_RETRY_SCHEDULE": "1",
        "LOG_LEVEL": "WARNING",
    }
    logs = (workdir / "service.log").open("wb")
    command = [sys.executable, "-m", "internvl_queue"]
    worker = subprocess.Popen([*command, "worker"], env=env, stdout=logs, stderr=logs)
    api = subprocess.Popen(
        [*command, "api", "--port", str(port)], env=env, stdout=logs, stderr=logs
    )
    client = redis.Redis.from_url(server.url)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while not WorkerRegistry(client).ready():
            if worker.poll() is not None or api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start; see {workdir / 'service.log'}")
            time.sleep(0.5)
        while True:
            try:
                requests.get(f"{base}/healthz", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        processes = {
            "api": lambda: _family(api.pid),
            "worker": lambda: _family(worker.pid),
            "redis": lambda: [server.process.pid],
        }
        rss_start = {name: _rss_kib(pids()) for name, pids in processes.items()}
        keys_start = _user_keys(client)
        rng = random.Random(0)
        payloads = [
            (
                [_image(rng) for _ in range(rng.randint(1, 3))],
                {
                    "question": f"What is in picture {i}?",
                    "max_new_tokens": str(rng.randint(1, 8)),
                    "max_tiles": str(rng.randint(1, 6)),
                },
            )
            for i in range(jobs)
        ]
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=threads))

        def submit(payload: tuple[list[bytes], dict[str, str]]) -> str:
            images, fields = payload
            files = [("image", (f"{n}.img", data)) for n, data in enumerate(images)]
            reply = session.post(f"{base}/v1/jobs", data=fields, files=files, timeout=60)
            reply.raise_for_status()
            job_id: str = reply.json()["id"]
            return job_id

        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            ids = list(pool.map(submit, payloads))
        submitted_s = time.perf_counter() - started
        say(f"{len(ids)} jobs accepted in {submitted_s:.1f} s")
        pending = list(ids)
        while pending and time.perf_counter() - started < 1800:
            pipe = client.pipeline(transaction=False)
            for job_id in pending:
                pipe.hget(job_key(job_id), "status")
            pending = [
                job_id
                for job_id, status in zip(pending, pipe.execute(), strict=True)
                if status is None or status.decode() not in _TERMINAL
            ]
            if pending:
                time.sleep(0.2)
        done_s = time.perf_counter() - started
        # What the callers see: each job read back through the API once.
        statuses = {i: session.get(f"{base}/v1/jobs/{i}", timeout=30).json() for i in ids}
        rss_end = {name: _rss_kib(pids()) for name, pids in processes.items()}
        keys_done = _user_keys(client)
        counted = collections.Counter(str(j["status"]) for j in statuses.values())
        time.sleep(2.5)  # a heartbeat after the last job, so that the worker's counters are final
        [info] = WorkerRegistry(client).ready()
        runs = info.jobs_succeeded + info.jobs_failed
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(job_key(job_id), "attempts")
        twice = sum(1 for attempts in pipe.execute() if attempts and int(attempts) > 1)
        say(f"finished in {done_s:.1f} s; waiting {retention_s} s for the records to expire")
        time.sleep(retention_s + 5)
        keys_expired = _user_keys(client)
        return {
            "jobs": jobs,
            "succeeded": counted["succeeded"],
            "failed": counted["failed"],
            "lost": len(pending) + sum(1 for j in statuses.values() if "status" not in j),
            "duplicated": max(twice, runs - jobs),
            "worker runs": runs,
            "accepted in s": round(submitted_s, 1),
            "all done in s": round(done_s, 1),
            "jobs/s": round(jobs / done_s, 1),
            **{f"RSS {name} start MiB": round(v / 1024, 1) for name, v in rss_start.items()},
            **{f"RSS {name} end MiB": round(v / 1024, 1) for name, v in rss_end.items()},
            "Redis keys before": keys_start,
            "Redis keys after the jobs": keys_done,
            f"Redis keys {retention_s + 5} s later": keys_expired,
        }
    finally:
        for process in (api, worker):
            process.terminate()
            process.wait(60)
        logs.close()
        client.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=16, help="concurrent submitters")
    parser.add_argument(
        "--retention",
        type=int,
        default=DEFAULT_RETENTION_S,
        help="job retention (s); must outlast the backlog's wait",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        figures = soak(args.jobs, args.threads, Path(workdir), args.retention)
    width = max(len(k) for k in figures)
    table = "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in figures.items())
    print(table)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{os.cpu_count()} CPU cores, no GPU (tiny model on the CPU)"
    with RESULTS.open("a") as out:
        out.write(
            f"\n## Soak: {args.jobs} jobs through the HTTP API ({stamp}, {machine})\n\n"
            "`python -m benchmarks.soak`: 1-3 images per job, max_tiles 1-6, max_new_tokens "
            "1-8, 16 concurrent submitters; real API (gunicorn), worker and Redis (AOF); job "
            f"retention shortened to {args.retention} s.\n\n"
            f"| figure | value |\n|---|---|\n{table}\n"
        )


if __name__ == "__main__":
    main()
