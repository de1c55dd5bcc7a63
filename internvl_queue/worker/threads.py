"""Bounded threads and no orphans: limits for the worker's helper processes, and counting threads.

Torch-free on purpose: a preprocessing child (``preprocess_child.py``) applies the limits below
before it imports torch, so that they hold whatever the environment says (OpenMP, MKL and
OpenBLAS read their thread counts once, when loaded). Each child then runs one job at a time on
one thread; parallelism comes from the number of children. This module imports nothing of the
worker's: the children's code depends on it, never the other way.
"""

from __future__ import annotations

import logging
import os
import threading
import time

__all__ = ["SINGLE_THREAD_ENV", "die_with_parent", "thread_count"]

log = logging.getLogger(__name__)

# Each library's own pool to one thread; tokenizers' Rust pool off.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "RAYON_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def die_with_parent(parent_pid: int, *, check_every_s: float = 0.25) -> None:
    """End this process within ``check_every_s`` of ``parent_pid``'s death, even by SIGKILL.

    A watcher thread compares ``getppid()``. Linux's parent-death signal (prctl) is not used:
    it fires when the *thread* that spawned the process exits, and a pool spawns its processes
    from whichever thread submits a job, so a healthy child would die with a finished thread.
    """
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(check_every_s)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def thread_count(pid: int | None = None) -> int:
    """Threads of a process (this one by default), from /proc; Python's own count elsewhere."""
    try:
        return len(os.listdir(f"/proc/{pid or os.getpid()}/task"))
    except OSError:
        return threading.active_count()
