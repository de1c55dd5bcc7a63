"""Batch throughput: the jobs/s of one N-line W1 batch against the same N jobs submitted one by
one, in one run, through a real API process, a private Redis and a real worker.

    python -m benchmarks.batch_throughput --model DIR   # DIR: 1B shape, built if missing
    python -m benchmarks.batch_throughput --model DIR --tiny --jobs 200   # CPU smoke run

- **batch**: one ``POST /v1/batches`` (JSON Lines, each line a W1 image in base64), then
  ``GET /v1/batches/<id>`` until it is ``completed``: the clock runs from the first byte sent to
  the batch's end, so validating and storing the lines is counted.
- **one by one**: the same N jobs as ``POST /v1/jobs`` (multipart) from ``--threads`` threads,
  then until every job is terminal (read from Redis, as ``benchmarks.soak`` does, so that polling
  does not load the API).

A warm-up of ``--warmup`` single jobs runs first (the first batches of each shape). Prints a table
(mode, jobs, seconds, jobs/s, ratio to one by one) and, unless ``--no-record``, appends it with the
device and date to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
import requests

from benchmarks.engine_bench import NEW_TOKENS, QUESTION, RESULTS, W1, images_for
from internvl_queue.cli.redis_server import free_port, start_redis
from internvl_queue.core.keys import job_key
from internvl_queue.core.workers import WorkerRegistry

_TERMINAL = (b"succeeded", b"failed", b"canceled")
# Job deadlines and records must outlast the slower mode's backlog.
_RETENTION_S = 7200


def say(message: str) -> None:
    print(f"[batch_throughput {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class Figure:
    mode: str
    jobs: int
    seconds: float
    succeeded: int

    @property
    def jobs_s(self) -> float:
        return self.jobs / self.seconds


class Service:
    """A private Redis, ``internvl-queue worker`` and ``internvl-queue api`` on ``model``."""

    def __init__(self, model: Path, workdir: Path, *, cpu: bool) -> None:
        self.server = start_redis(workdir / "redis", persistent=False)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "REDIS_URL": self.server.url,
            "INTERNVL_MODEL": str(model),
            "INTERNVL_AUTH": "open",
            "INTERNVL_HEARTBEAT_S": "1",
            "INTERNVL_JOB_RETENTION_S": str(_RETENTION_S),
            "INTERNVL_IDEMPOTENCY_TTL_S": str(_RETENTION_S),
            "INTERNVL_DEFAULT_TIMEOUT_S": str(_RETENTION_S - 60),
            "INTERNVL_MAX_TIMEOUT_S": str(_RETENTION_S - 60),
            "INTERNVL_VISIBILITY_TIMEOUT_S": str(_RETENTION_S * 2),
            "INTERNVL_MAX_QUEUED_JOBS": "0",
            "INTERNVL_MAX_QUEUED_BATCH_JOBS": "0",
            "INTERNVL_RATE_LIMIT_JOBS": "0",
            "WEBHOOK_RETRY_SCHEDULE": "1",  # no webhooks here; retention must cover it
            "LOG_LEVEL": "WARNING",
        }
        if cpu:
            env["INTERNVL_DEVICE"] = "cpu"
        self.log_path = workdir / "service.log"
        self._log = self.log_path.open("wb")
        command = [sys.executable, "-m", "internvl_queue"]
        output = {"env": env, "stdout": self._log, "stderr": subprocess.STDOUT}
        self.worker = subprocess.Popen([*command, "worker"], **output)  # type: ignore[call-overload]
        self.api = subprocess.Popen([*command, "api", "--port", str(port)], **output)  # type: ignore[call-overload]
        self.redis = redis.Redis.from_url(self.server.url)

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while not WorkerRegistry(self.redis).ready():
            self._check_alive(deadline)
            time.sleep(0.5)
        while True:
            try:
                requests.get(f"{self.base}/healthz", timeout=2)
                return
            except requests.ConnectionError:
                self._check_alive(deadline)
                time.sleep(0.2)

    def _check_alive(self, deadline: float) -> None:
        if self.worker.poll() is not None or self.api.poll() is not None:
            raise RuntimeError(f"the service stopped; see {self.log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start in time; see {self.log_path}")

    def wait_terminal(self, ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = ids
        while pending:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in pending:
                pipe.hget(job_key(job_id), "status")
            pending = [
                i for i, s in zip(pending, pipe.execute(), strict=True) if s not in _TERMINAL
            ]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} jobs unfinished after {timeout_s:.0f} s")
            time.sleep(0.05)

    def succeeded(self, ids: list[str]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(job_key(job_id), "status")
        return sum(1 for s in pipe.execute() if s == b"succeeded")

    def stop(self) -> None:
        for process in (self.api, self.worker):
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        self._log.close()
        self.redis.close()
        self.server.stop()


def one_by_one(
    service: Service, images: list[bytes], jobs: int, threads: int, timeout_s: float
) -> Figure:
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=threads))
    fields = {"question": QUESTION, "max_new_tokens": str(NEW_TOKENS)}

    def submit(i: int) -> str:
        files = [("image", (f"{i}.jpg", images[i % len(images)], "image/jpeg"))]
        reply = session.post(f"{service.base}/v1/jobs", data=fields, files=files, timeout=120)
        reply.raise_for_status()
        job_id: str = reply.json()["id"]
        return job_id

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        ids = list(pool.map(submit, range(jobs)))
    service.wait_terminal(ids, timeout_s)
    elapsed = time.perf_counter() - started
    session.close()
    return Figure("one by one", jobs, elapsed, service.succeeded(ids))


def batch_body(images: list[bytes], jobs: int) -> bytes:
    encoded = [base64.b64encode(image).decode() for image in images]
    lines = (
        json.dumps(
            {
                "custom_id": f"w1-{i}",
                "question": QUESTION,
                "images": [{"data": encoded[i % len(encoded)]}],
                "max_new_tokens": NEW_TOKENS,
            }
        )
        for i in range(jobs)
    )
    return "\n".join(lines).encode()


def one_batch(service: Service, body: bytes, jobs: int, timeout_s: float) -> Figure:
    started = time.perf_counter()
    reply = requests.post(
        f"{service.base}/v1/batches",
        data=body,
        headers={"Content-Type": "application/jsonl"},
        timeout=timeout_s,
    )
    reply.raise_for_status()
    batch = reply.json()
    if batch["counts"]["jobs"] != jobs:
        raise RuntimeError(f"the batch took {batch['counts']['jobs']} of {jobs} lines")
    deadline = time.monotonic() + timeout_s
    while batch["status"] not in ("completed", "canceled", "failed"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the batch is still {batch['status']}: {batch['counts']}")
        time.sleep(0.05)
        batch = requests.get(f"{service.base}/v1/batches/{batch['id']}", timeout=30).json()
    elapsed = time.perf_counter() - started
    return Figure("batch", jobs, elapsed, int(batch["counts"]["succeeded"]))


def device_name(cpu: bool) -> str:
    if not cpu:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    return f"cpu ({os.cpu_count()} cores)"


def table(figures: list[Figure]) -> str:
    base = next(f for f in figures if f.mode == "one by one")
    rows = [
        "| mode | jobs | seconds | jobs/s | vs one by one | succeeded |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        rows.append(
            f"| {f.mode} | {f.jobs} | {f.seconds:.1f} | {f.jobs_s:.1f} "
            f"| {f.jobs_s / base.jobs_s:.2f}x | {f.succeeded} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=16, help="submitters of the one-by-one run")
    parser.add_argument("--warmup", type=int, default=64, help="single jobs sent first")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per mode")
    parser.add_argument(
        "--tiny", action="store_true", help="build the tiny model into --model if missing; CPU"
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    if not args.model.exists():
        if args.tiny:
            from internvl_queue.testing.tiny_model import make_tiny_model

            say("building the tiny model")
            make_tiny_model(args.model)
        else:
            from benchmarks.shapes import write_internvl3_1b_shaped

            say("building the InternVL3-1B-shaped checkpoint")
            write_internvl3_1b_shaped(args.model)
    images = images_for(W1)
    body = batch_body(images, args.jobs)
    say(f"batch body: {len(body) / 2**20:.1f} MiB for {args.jobs} lines")
    with tempfile.TemporaryDirectory() as workdir:
        service = Service(args.model, Path(workdir), cpu=args.tiny)
        try:
            service.wait_ready()
            say("service ready; warming up")
            one_by_one(service, images, args.warmup, args.threads, args.timeout)
            figures = [one_batch(service, body, args.jobs, args.timeout)]
            say(f"batch: {figures[0]}")
            figures.insert(0, one_by_one(service, images, args.jobs, args.threads, args.timeout))
            say(f"one by one: {figures[0]}")
        except Exception:
            say("service log (tail):\n" + service.log_path.read_text(errors="replace")[-4000:])
            raise
        finally:
            service.stop()
    result = table(figures)
    print(result, flush=True)
    if args.no_record:
        return
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with RESULTS.open("a") as out:
        out.write(
            f"\n## Batch against one by one, {device_name(args.tiny)}, {stamp}\n\n"
            f"`{' '.join(['python -m benchmarks.batch_throughput', *sys.argv[1:]])}`: real API "
            "(gunicorn), `internvl-queue worker` and Redis; W1 jobs (448 x 448, one tile, "
            f"{NEW_TOKENS} new tokens). The batch: one `POST /v1/batches` of {args.jobs} JSON "
            "Lines (base64 images) until `completed` (low lane); one by one: the same jobs as "
            f"multipart `POST /v1/jobs` from {args.threads} threads until all are terminal "
            f"(normal lane). After a warm-up of {args.warmup} jobs, batch first.\n\n{result}\n"
        )


if __name__ == "__main__":
    main()
