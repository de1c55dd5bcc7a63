"""What one torch call of the engine thread costs while other threads of its process run Python.

    python -m benchmarks.gil_handoff                  # one torch call
    python -m benchmarks.gil_handoff --model DIR      # and the engine's W1 burst


Each torch call lets go of the GIL around its kernel (or its launch, on a GPU) and must take it
back. A thread that runs Python meanwhile keeps it until Python's switch interval ends (5 ms by
default), so a call that needs microseconds waits milliseconds. In a GPU worker, the engine
thread makes thousands of such calls per batch while Celery's consumer, the jobs' task threads
(Redis replies, JSON) and the preprocessing pool's result thread run Python beside it. This
measures a call (a tiny CPU op, as cheap as a kernel launch) with 0, 1 and 4 busy threads, at
several switch intervals (``INTERNVL_GIL_SWITCH_MS``), and prints a table. With ``--model``, the
same for the batching engine's W1 burst (``benchmarks.engine_bench``'s), through the worker's own
preprocessing pool, with 0 and 2 busy threads in the process.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import torch

INTERVALS_MS = (5.0, 1.0, 0.5, 0.2, 0.1)
BUSY_THREADS = (0, 1, 4)
CALLS = 2000


def _busy(stop: threading.Event) -> None:
    """Python work like a task thread's: a job record through JSON, again and again."""
    record = {
        "id": "0" * 32,
        "params": {"max_new_tokens": 64, "max_tiles": 6},
        "question": "q" * 80,
    }
    while not stop.is_set():
        json.loads(json.dumps(record))


def call_us(busy_threads: int, interval_ms: float) -> float:
    """Mean microseconds per torch call with ``busy_threads`` beside it."""
    sys.setswitchinterval(interval_ms / 1000)
    stop = threading.Event()
    threads = [threading.Thread(target=_busy, args=(stop,)) for _ in range(busy_threads)]
    for thread in threads:
        thread.start()
    try:
        x = torch.zeros(8)
        started = time.perf_counter()
        for _ in range(CALLS):
            x = x + 1
        return (time.perf_counter() - started) / CALLS * 1e6
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def engine_jobs_s(model: str, jobs: int) -> dict[tuple[float, int], float]:
    """W1 burst jobs/s of the engine for each (switch interval, busy threads)."""
    from benchmarks.engine_bench import W1
    from benchmarks.whole_path import warm_submitter

    submitter = warm_submitter(model, warmup=min(jobs, 256))
    engine, preprocessor = submitter.engine, submitter.preprocessor
    figures = {}
    try:
        for interval in (5.0, 0.2):
            for busy_threads in (0, 2):
                sys.setswitchinterval(interval / 1000)
                stop = threading.Event()
                threads = [
                    threading.Thread(target=_busy, args=(stop,)) for _ in range(busy_threads)
                ]
                for thread in threads:
                    thread.start()
                try:
                    figures[interval, busy_threads] = submitter.burst(W1, jobs)["jobs_s"]
                finally:
                    stop.set()
                    for thread in threads:
                        thread.join()
                print(
                    f"{interval:g} ms, {busy_threads} busy: {figures[interval, busy_threads]:.1f}"
                )
    finally:
        engine.stop()
        preprocessor.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="also the engine's W1 burst on this checkpoint")
    parser.add_argument("--jobs", type=int, default=512, help="jobs per engine burst")
    args = parser.parse_args()
    default = sys.getswitchinterval()
    header = "| switch interval | " + " | ".join(f"{n} busy threads" for n in BUSY_THREADS) + " |"
    print("One torch call (a tiny CPU op) beside busy threads:\n")
    print(header)
    print("|---" * (len(BUSY_THREADS) + 1) + "|")
    try:
        for interval in INTERVALS_MS:
            cells = [f"{call_us(n, interval):.1f} us" for n in BUSY_THREADS]
            print(f"| {interval:g} ms | " + " | ".join(cells) + " |", flush=True)
        if args.model:
            figures = engine_jobs_s(args.model, args.jobs)
            print(f"\nEngine W1 burst of {args.jobs} jobs, jobs/s:\n")
            print("| switch interval | 0 busy threads | 2 busy threads |\n|---|---|---|")
            for interval in (5.0, 0.2):
                print(
                    f"| {interval:g} ms | {figures[interval, 0]:.1f} | {figures[interval, 2]:.1f} |"
                )
    finally:
        sys.setswitchinterval(default)


if __name__ == "__main__":
    main()
