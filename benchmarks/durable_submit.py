"""What the durability wait costs a submit: ``POST /v1/jobs`` latency against a real primary +
replica, with ``INTERNVL_REDIS_MIN_REPLICAS=0`` (no wait) and ``=1`` (``WAIT 1`` after the submit
transaction), in the same run.

    python -m benchmarks.durable_submit [--submits 500] [--threads 4] [--rounds 2]

It starts a private redis-server primary and a replica of it (``replicaof``, both on loopback),
then, for each setting in turn (``--rounds`` times, alternating, so that drift of the machine
hits both alike), an ``internvl-queue api`` (gunicorn, its default processes and threads,
INTERNVL_AUTH=open) on that primary; ``--threads`` clients send ``--submits`` small JSON submits
in all (one 64x48 JPEG), each timed from send to the 202. No GPU worker: the jobs stay queued.
Prints a table of p50/p99/max per setting; nothing is written to RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from internvl_queue.cli.redis_server import free_port, start_redis
from tests.images import photo

_IMAGE = base64.b64encode(photo(64, 48, seed=3)).decode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q / 100 * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def timed_submits(base: str, submits: int, threads: int) -> tuple[list[float], dict[int, int]]:
    """Latencies (ms) of ``submits`` submits over ``threads`` threads, and the statuses seen."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    body = {"question": "What is in the picture?", "images": [{"data": _IMAGE}]}

    def client(count: int) -> None:
        with requests.Session() as session:
            for _ in range(count):
                started = time.perf_counter()
                status = session.post(f"{base}/v1/jobs", json=body, timeout=30).status_code
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    latencies.append(elapsed)
                    statuses[status] = statuses.get(status, 0) + 1

    workers = [
        threading.Thread(target=client, args=(submits // threads + (i < submits % threads),))
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies, statuses


def run_api(
    redis_url: str, min_replicas: int, timeout_ms: int
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "INTERNVL_AUTH": "open",
        "LOG_LEVEL": "WARNING",
        "INTERNVL_REDIS_MIN_REPLICAS": str(min_replicas),
        "INTERNVL_REDIS_REPLICA_TIMEOUT_MS": str(timeout_ms),
    }
    api = subprocess.Popen(
        [sys.executable, "-m", "internvl_queue", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return api, base
        except requests.ConnectionError:
            pass
        if api.poll() is not None or time.monotonic() > deadline:
            api.kill()
            raise RuntimeError("the API did not start")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=500, help="timed submits per setting")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per setting")
    parser.add_argument("--timeout-ms", type=int, default=500)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    primary = start_redis(root / "primary", persistent=False)
    replica = start_redis(root / "replica", persistent=False, replica_of=primary.port)
    results: dict[int, tuple[list[float], dict[int, int]]] = {0: ([], {}), 1: ([], {})}
    try:
        for _ in range(args.rounds):
            for min_replicas in (0, 1):
                api, base = run_api(primary.url, min_replicas, args.timeout_ms)
                try:
                    timed_submits(base, 20, args.threads)  # warm-up, not counted
                    latencies, statuses = timed_submits(
                        base, args.submits // args.rounds, args.threads
                    )
                finally:
                    api.terminate()
                    api.wait(30)
                results[min_replicas][0].extend(latencies)
                for status, count in statuses.items():
                    results[min_replicas][1][status] = (
                        results[min_replicas][1].get(status, 0) + count
                    )
    finally:
        replica.stop()
        primary.stop()
    print(
        f"durable_submit: {platform.node()}, {os.cpu_count()} CPUs, {args.threads} threads, "
        f"{args.rounds} alternating rounds, WAIT timeout {args.timeout_ms} ms, loopback replica"
    )
    print()
    print("| INTERNVL_REDIS_MIN_REPLICAS | submits | statuses | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for min_replicas, (latencies, statuses) in results.items():
        seen = ", ".join(f"{count}x{status}" for status, count in sorted(statuses.items()))
        print(
            f"| {min_replicas} | {len(latencies)} | {seen} | {percentile(latencies, 50):.1f} | "
            f"{percentile(latencies, 99):.1f} | {max(latencies):.1f} |"
        )


if __name__ == "__main__":
    main()
