"""What one torch call of the engine thread costs while other threads of its process run Python.

    python -m benchmarks.gil_handoff

Each torch call lets go of the GIL around its kernel (or its launch, on a GPU) and must take it
back. A thread that runs Python meanwhile keeps it until Python's switch interval ends (5 ms by
default), so a call that needs microseconds waits milliseconds. In a GPU worker, the engine
thread makes thousands of such calls per batch while Celery's consumer, the jobs' task threads
(Redis replies, JSON) and the preprocessing pool's result thread run Python beside it. This
measures a call (a tiny CPU op, as cheap as a kernel launch) with 0, 1 and 4 busy threads, at
several switch intervals (``INTERNVL_GIL_SWITCH_MS``), and prints a table.
"""

from __future__ import annotations

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


def main() -> None:
    default = sys.getswitchinterval()
    header = "| switch interval | " + " | ".join(f"{n} busy threads" for n in BUSY_THREADS) + " |"
    print(header)
    print("|---" * (len(BUSY_THREADS) + 1) + "|")
    try:
        for interval in INTERVALS_MS:
            cells = [f"{call_us(n, interval):.1f} us" for n in BUSY_THREADS]
            print(f"| {interval:g} ms | " + " | ".join(cells) + " |", flush=True)
    finally:
        sys.setswitchinterval(default)


if __name__ == "__main__":
    main()
