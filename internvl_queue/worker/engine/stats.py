"""Engine counters for heartbeats and logs: batch sizes, tiles, throughput, GPU memory."""

from __future__ import annotations

import threading
import time
from collections import deque

import torch

__all__ = ["EngineStats"]

_WINDOW_S = 60.0  # throughput is measured over the last minute


class EngineStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches = 0
        self.jobs = 0
        self.tiles = 0
        self.tokens = 0
        self.largest_batch = 0
        self.largest_batch_tiles = 0  # the most image tiles one batch carried: peak memory
        self.oom_splits = 0
        self.error_splits = 0
        self._recent: deque[tuple[float, int, int]] = deque()  # (finished at, jobs, tokens)

    def batch_done(self, *, jobs: int, tiles: int, tokens: int, seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.batches += 1
            self.jobs += jobs
            self.tiles += tiles
            self.tokens += tokens
            self.largest_batch = max(self.largest_batch, jobs)
            self.largest_batch_tiles = max(self.largest_batch_tiles, tiles)
            self._recent.append((now, jobs, tokens))
            while self._recent and self._recent[0][0] < now - _WINDOW_S:
                self._recent.popleft()

    def out_of_memory(self) -> None:
        with self._lock:
            self.oom_splits += 1

    def error_split(self) -> None:
        with self._lock:
            self.error_splits += 1

    def snapshot(self) -> dict[str, float | int]:
        now = time.monotonic()
        with self._lock:
            recent = [r for r in self._recent if r[0] >= now - _WINDOW_S]
            span = max(now - recent[0][0], 1.0) if recent else _WINDOW_S
            snap: dict[str, float | int] = {
                "batches": self.batches,
                "batched_jobs": self.jobs,
                "mean_batch_size": round(self.jobs / self.batches, 2) if self.batches else 0,
                "largest_batch": self.largest_batch,
                "largest_batch_tiles": self.largest_batch_tiles,
                "mean_tiles_per_batch": round(self.tiles / self.batches, 2) if self.batches else 0,
                "jobs_per_s": round(sum(r[1] for r in recent) / span, 2),
                "tokens_per_s": round(sum(r[2] for r in recent) / span, 1),
                "oom_splits": self.oom_splits,
                "error_splits": self.error_splits,
            }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            snap["gpu_memory_mb"] = round(torch.cuda.memory_allocated() / 2**20)
            snap["gpu_memory_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        return snap
