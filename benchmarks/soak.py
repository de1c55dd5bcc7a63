"""Soak: thousands of jobs through the real HTTP API, a real worker and Redis (AOF), on the tiny
model; counts what came back and watches memory and Redis keys.

    python -m benchmarks.soak                 # 5 000 jobs
    python -m benchmarks.soak --jobs 500      # a quick run
    python -m benchmarks.soak --rounds 10     # 10 rounds of 500

The jobs go in ``--rounds`` equal rounds (5 by default), each submitted at once and waited for,
so that memory is sampled at the same point of every round: a leak grows round after round,
a warm-up (allocator arenas, the first batches of each shape) only in the first.

Prints two tables and appends them to benchmarks/RESULTS.md:
- succeeded / failed / lost (no terminal record) / duplicated (a job run more than once, or the
  worker's counters above the number of jobs);
- RSS of the API (gunicorn, every process), the worker and Redis, once the service is ready and
  after each round, and the growth from the end of the first round to the end of the last;
- Redis keys before, after each round, and once the job records have expired (retention
  shortened).
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
# The jobs' deadline (retention - 60 s, the least the settings allow) must outlast the backlog's
# wait, or jobs end `timeout` while still queued.
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


def soak(
    jobs: int, rounds: int, threads: int, workdir: Path, retention_s: int, same_jobs: bool = False
) -> tuple[dict[str, object], list[dict[str, object]]]:
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
        "INTERNVL_DEFAULT_TIMEOUT_S": str(retention_s - 60),
        "INTERNVL_MAX_TIMEOUT_S": str(retention_s - 60),
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
            for i in range(-(-jobs // rounds) if same_jobs else jobs)
        ]
        if same_jobs:  # every round sends the first round's images and parameters again
            payloads = (payloads * rounds)[:jobs]
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=threads))

        def submit(payload: tuple[list[bytes], dict[str, str]]) -> str:
            images, fields = payload
            files = [("image", (f"{n}.img", data)) for n, data in enumerate(images)]
            reply = session.post(f"{base}/v1/jobs", data=fields, files=files, timeout=60)
            reply.raise_for_status()
            job_id: str = reply.json()["id"]
            return job_id

        def rss_mib() -> dict[str, float]:
            return {name: round(_rss_kib(pids()) / 1024, 1) for name, pids in processes.items()}

        def wait_terminal(pending: list[str], until: float) -> list[str]:
            while pending and time.perf_counter() < until:
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
            return pending

        ids: list[str] = []
        pending: list[str] = []
        statuses: dict[str, dict[str, object]] = {}
        twice = 0
        per_round: list[dict[str, object]] = [
            {
                "after": "start (service ready)",
                **rss_mib(),
                "largest batch (jobs, tiles)": "-",
                "Redis keys": keys_start,
            }
        ]
        started = time.perf_counter()
        submitted_s = paused_s = 0.0
        size = -(-jobs // rounds)
        for number, first in enumerate(range(0, jobs, size), start=1):
            round_start = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                batch = list(pool.map(submit, payloads[first : first + size]))
            submitted_s += time.perf_counter() - round_start
            ids += batch
            pending += wait_terminal(batch, started + 1800)
            # What the callers see: each job read back through the API once, before its record
            # can expire (a short retention outlasts a round, not the whole run).
            statuses.update(
                {i: session.get(f"{base}/v1/jobs/{i}", timeout=30).json() for i in batch}
            )
            pipe = client.pipeline(transaction=False)
            for job_id in batch:
                pipe.hget(job_key(job_id), "attempts")
            twice += sum(1 for attempts in pipe.execute() if attempts and int(attempts) > 1)
            # The worker idle for its trim's period (5 s) and two heartbeats: it gave its freed
            # heap back (worker/memory.py), so what is measured is what it holds.
            time.sleep(7.0)
            paused_s += 7.0
            engine = next(iter(WorkerRegistry(client).ready())).engine or {}
            per_round.append(
                {
                    "after": f"round {number} ({len(ids)} jobs)",
                    **rss_mib(),
                    # The worker's peak memory follows its largest batch so far, not its jobs.
                    "largest batch (jobs, tiles)": f"{engine.get('largest_batch')}, "
                    f"{engine.get('largest_batch_tiles')}",
                    "Redis keys": _user_keys(client),
                }
            )
            say(f"round {number}: {per_round[-1]}")
        done_s = time.perf_counter() - started - paused_s  # the pauses for the trim left out
        keys_done = _user_keys(client)
        counted = collections.Counter(str(j["status"]) for j in statuses.values())
        time.sleep(2.5)  # a heartbeat after the last job, so that the worker's counters are final
        [info] = WorkerRegistry(client).ready()
        runs = info.jobs_succeeded + info.jobs_failed
        say(f"finished in {done_s:.1f} s; waiting {retention_s} s for the records to expire")
        time.sleep(retention_s + 5)
        keys_expired = _user_keys(client)
        first_round, last_round = per_round[1], per_round[-1]
        growth = {
            f"RSS {name} growth, round 1 to {rounds}, MiB": round(
                float(last_round[name]) - float(first_round[name]),
                1,  # type: ignore[arg-type]
            )
            for name in processes
        }
        return {
            "jobs": jobs,
            "rounds": len(per_round) - 1,
            "succeeded": counted["succeeded"],
            "failed": counted["failed"],
            "lost": len(pending) + sum(1 for j in statuses.values() if "status" not in j),
            "duplicated": max(twice, runs - jobs),
            "worker runs": runs,
            "accepted in s": round(submitted_s, 1),
            "all done in s": round(done_s, 1),
            "jobs/s": round(jobs / done_s, 1),
            **{f"RSS {name} start MiB": per_round[0][name] for name in processes},
            **{f"RSS {name} end MiB": last_round[name] for name in processes},
            **growth,
            "Redis keys before": keys_start,
            "Redis keys after the jobs": keys_done,
            f"Redis keys {retention_s + 5} s later": keys_expired,
        }, per_round
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
    parser.add_argument("--rounds", type=int, default=5, help="rounds the jobs are sent in")
    parser.add_argument("--threads", type=int, default=16, help="concurrent submitters")
    parser.add_argument(
        "--same-jobs",
        action="store_true",
        help="send the same images and parameters (as new jobs) every round: once the first "
        "round has shown the worker every input shape, memory that still grows is a leak",
    )
    parser.add_argument(
        "--retention",
        type=int,
        default=DEFAULT_RETENTION_S,
        help="job retention (s); must outlast the backlog's wait",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        figures, per_round = soak(
            args.jobs, args.rounds, args.threads, Path(workdir), args.retention, args.same_jobs
        )
    width = max(len(k) for k in figures)
    table = "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in figures.items())
    columns = list(per_round[0])
    rounds_table = "\n".join(
        [
            "| "
            + " | ".join(f"RSS {c} MiB" if c in ("api", "worker", "redis") else c for c in columns)
            + " |",
            "|" + "---|" * len(columns),
            *("| " + " | ".join(str(row[c]) for c in columns) + " |" for row in per_round),
        ]
    )
    print(table)
    print(rounds_table)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{os.cpu_count()} CPU cores, no GPU (tiny model on the CPU)"
    with RESULTS.open("a") as out:
        out.write(
            f"\n## Soak: {args.jobs} jobs through the HTTP API ({stamp}, {machine})\n\n"
            f"`{' '.join(['python -m benchmarks.soak', *sys.argv[1:]])}`: {args.rounds} rounds"
            f"{' of the same jobs' if args.same_jobs else ''}, 1-3 images per job, "
            "max_tiles 1-6, max_new_tokens 1-8, 16 concurrent submitters; real API (gunicorn), "
            "worker and Redis (AOF); job "
            f"retention shortened to {args.retention} s.\n\n"
            f"| figure | value |\n|---|---|\n{table}\n\n{rounds_table}\n"
        )


if __name__ == "__main__":
    main()
