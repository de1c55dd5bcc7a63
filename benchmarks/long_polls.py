"""Long polls against a real API: 500 concurrent ``GET /v1/jobs/<id>?wait=30`` callers while
submits and ``/readyz`` are timed (target: both under 100 ms at p99).

    python -m benchmarks.long_polls [--callers 500] [--seconds 30] [--baseline REV] [--record]

It starts a private redis-server and ``internvl-queue api`` (gunicorn, its default processes and
threads, INTERNVL_AUTH=open); no GPU worker: the jobs the callers wait on are finished by this
script (claim + finish in the store, as a worker would), spread over the run, so every caller's
long poll ends on a real notification. Each caller loops as a client should: ``?wait=30`` until
the job is terminal, honouring ``Retry-After`` when the API answers at once because it already
holds as many long polls as it may. One probe thread submits a job every 100 ms, another reads
``/readyz`` every 100 ms. Prints a table; ``--record`` appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
import requests

from internvl_queue.cli.redis_server import free_port, start_redis
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore

RESULTS = Path(__file__).with_name("RESULTS.md")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q / 100 * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


class Caller(threading.Thread):
    """One client long-polling one job until it is terminal."""

    def __init__(self, port: int, job_id: str, wait_s: int) -> None:
        super().__init__(daemon=True)
        self.port, self.job_id, self.wait_s = port, job_id, wait_s
        self.requests = self.bounced = 0
        self.final: str | None = None
        self.error: str | None = None

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.wait_s + 30)
        try:
            while self.final is None:
                connection.request("GET", f"/v1/jobs/{self.job_id}?wait={self.wait_s}")
                reply = connection.getresponse()
                body = json.loads(reply.read())
                self.requests += 1
                retry_after = reply.getheader("Retry-After")
                self.bounced += retry_after is not None
                if body["status"] in ("succeeded", "failed", "canceled"):
                    self.final = body["status"]
                elif retry_after is not None:
                    time.sleep(float(retry_after))
        except Exception as exc:  # reported in the table
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()


class Probe(threading.Thread):
    def __init__(self, name: str, call: callable, period_s: float) -> None:  # type: ignore[valid-type]
        super().__init__(daemon=True)
        self.label, self.call, self.period_s = name, call, period_s
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                status = self.call(session)
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                if status >= 500 and status != 503:
                    self.failures.append(str(status))
            except requests.RequestException as exc:
                self.failures.append(type(exc).__name__)
            self.stop.wait(self.period_s)


@dataclass
class Run:
    label: str
    submit: Probe
    readyz: Probe
    callers: list[Caller]


def run_scenario(label: str, api_source: Path | None, args: argparse.Namespace) -> Run:
    """Start Redis and the API (from ``api_source``, a checkout, or this one), run the callers
    and probes while the jobs finish over ``args.seconds``; stop everything."""
    server = start_redis(Path(tempfile.mkdtemp()) / "redis", persistent=False)
    port = free_port()
    env = {**os.environ, "REDIS_URL": server.url, "INTERNVL_AUTH": "open", "LOG_LEVEL": "WARNING"}
    if api_source is not None:
        env["PYTHONPATH"] = str(api_source)
    serve = [sys.executable, "-m", "internvl_queue", "api", "--port", str(port)]
    api = subprocess.Popen(
        ["nice", "-n", str(args.api_nice), *serve],
        env=env,
        cwd=api_source or Path.cwd(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{base}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the API did not start"
                time.sleep(0.2)
        client = redis.Redis.from_url(server.url)
        store = JobStore(client, retention_s=3600)
        body = {"question": "What is it?", "images": [{"data": _PNG}]}
        ids = [
            requests.post(f"{base}/v1/jobs", json=body, timeout=10).json()["id"]
            for _ in range(args.callers)
        ]
        callers = [Caller(port, job_id, 30) for job_id in ids]
        submit = Probe(
            "submit", lambda s: s.post(f"{base}/v1/jobs", json=body, timeout=10).status_code, 0.1
        )
        readyz = Probe("/readyz", lambda s: s.get(f"{base}/readyz", timeout=10).status_code, 0.1)
        for thread in callers:
            thread.start()
        time.sleep(2.0)  # every caller is now in its first long poll (held or answered)
        submit.start()
        readyz.start()
        # Finish the jobs one by one, spread over the run, as a worker would.
        started = time.monotonic()
        order = random.Random(0).sample(ids, len(ids))
        for index, job_id in enumerate(order):
            due = started + args.seconds * (index + 1) / len(order)
            time.sleep(max(due - time.monotonic(), 0))
            claim = store.claim(job_id, max_attempts=3)
            assert claim.job is not None
            store.finish(claim.job, JobStatus.SUCCEEDED, result={"answer": "done"})
        for thread in callers:
            thread.join(60)
        submit.stop.set()
        readyz.stop.set()
        submit.join()
        readyz.join()
        client.close()
    finally:
        api.terminate()
        api.wait(30)
        server.stop()
    return Run(label, submit, readyz, callers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30.0, help="finish jobs over this long")
    parser.add_argument("--record", action="store_true")
    parser.add_argument(
        "--baseline",
        metavar="GIT_REV",
        help="also run the API of this revision (a temporary git worktree), first, for comparison",
    )
    parser.add_argument(
        "--api-nice",
        type=int,
        default=0,
        help="run the API at this niceness (negative, as root: ahead of this load generator and "
        "of anything else on a shared machine, as if it had cores of its own)",
    )
    args = parser.parse_args()

    runs: list[Run] = []
    if args.baseline:
        worktree = Path(tempfile.mkdtemp()) / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(worktree), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            runs.append(run_scenario(f"baseline ({args.baseline})", worktree, args))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], check=True)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    runs.append(run_scenario(f"this checkout ({head or 'HEAD'})", None, args))

    lines = [
        f"### Long polls: {args.callers} concurrent `?wait=30` callers "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs)",
        "",
        "API: `internvl-queue api` (gunicorn, 2 processes x 8 threads, each revision's "
        f"INTERNVL_MAX_WAITERS default, niceness {args.api_nice}); jobs finished over "
        f"{args.seconds:.0f} s; no GPU "
        "worker (/readyz answers 503); the load generator runs on the same machine.",
        "",
        "| API | request | count | p50 ms | p95 ms | p99 ms | max ms | failures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for probe in (run.submit, run.readyz):
            v = probe.latencies_ms
            lines.append(
                f"| {run.label} | {probe.label} | {len(v)} | {percentile(v, 50):.1f} | "
                f"{percentile(v, 95):.1f} | {percentile(v, 99):.1f} | {max(v):.1f} | "
                f"{len(probe.failures)} |"
            )
    lines.append("")
    for run in runs:
        done = sum(1 for c in run.callers if c.final == "succeeded")
        errors = [c.error for c in run.callers if c.error]
        bounced = sum(c.bounced for c in run.callers)
        total = sum(c.requests for c in run.callers)
        lines.append(
            f"{run.label}: {done}/{len(run.callers)} callers saw their job succeed, "
            f"{len(errors)} errors; {total} long-poll requests: {total - bounced} held until the "
            f"job finished (or the wait ended), {bounced} answered at once with Retry-After: 1 "
            "(the process's waiters full)."
        )
        if errors:
            lines.append(f"errors: {errors[:5]}")
    lines.append("")
    table = "\n".join(lines)
    print(table)
    if args.record:
        with RESULTS.open("a") as file:
            file.write("\n" + table)


# An 8x8 PNG: the image does not matter here, only the requests.
_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8wcXFgA0wYRUdtBIAse4A7AgtPbsAAAAA"
    "SUVORK5CYII="
)

if __name__ == "__main__":
    main()
