"""Engine counters for heartbeats and logs: batch sizes, tiles, throughput, GPU memory, and the
decode CUDA graphs (captured at start-up; any capture while serving stalled a batch)."""

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
        self.graph_captures = 0  # decode CUDA graphs captured, in all
        self.graph_captures_serving = 0  # ... of them after start-up: each one stalled a batch
        self.graph_capture_s = 0.0
        self.decode_shapes = 0  # planned decode shapes, prepared at start-up
        self.decode_workspace_mb = 0.0  # their KV cache and buffers (allocated)
        self.decode_graph_reserved_mb = 0.0  # the same, with the graphs' temporaries (reserved)
        self.uncaptured_batches = 0  # batches outside the planned shapes: decoded without a graph
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

    def graph_captured(self, seconds: float, *, serving: bool) -> None:
        with self._lock:
            self.graph_captures += 1
            self.graph_captures_serving += int(serving)
            self.graph_capture_s += seconds

    def workspaces_ready(self, *, shapes: int, allocated_mb: float, reserved_mb: float) -> None:
        with self._lock:
            self.decode_shapes = shapes
            self.decode_workspace_mb = allocated_mb
            self.decode_graph_reserved_mb = reserved_mb

    def uncaptured_batch(self) -> None:
        with self._lock:
            self.uncaptured_batches += 1

    def snapshot(self) -> dict[str, float | int]:
        now = time.monotonic()
        with self._lock:
            recent = [r for r in self._recent if r[0] >= now - _WINDOW_S]
            span = max(now - recent[0][0], 1.0) if recent else _WINDOW_S
            snap: dict[str, float | int] = {
                "batches": self.batches,
                "batched_jobs": self.jobs,
                "batched_tiles": self.tiles,
                "generated_tokens": self.tokens,
                "mean_batch_size": round(self.jobs / self.batches, 2) if self.batches else 0,
                "largest_batch": self.largest_batch,
                "largest_batch_tiles": self.largest_batch_tiles,
                "mean_tiles_per_batch": round(self.tiles / self.batches, 2) if self.batches else 0,
                "jobs_per_s": round(sum(r[1] for r in recent) / span, 2),
                "tokens_per_s": round(sum(r[2] for r in recent) / span, 1),
                "oom_splits": self.oom_splits,
                "error_splits": self.error_splits,
                "graph_captures": self.graph_captures,
                "graph_captures_serving": self.graph_captures_serving,
                "graph_capture_s": round(self.graph_capture_s, 2),
                "decode_shapes": self.decode_shapes,
                "decode_workspace_mb": round(self.decode_workspace_mb),
                "decode_graph_reserved_mb": round(self.decode_graph_reserved_mb),
                "uncaptured_batches": self.uncaptured_batches,
            }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            # Every GPU the process sees: a worker spanning GPUs (--gpus-per-worker) sees only
            # its own (cli/gpu_workers.py), and holds memory on each. The peak sums each one's.
            gpus = range(torch.cuda.device_count())
            allocated = sum(torch.cuda.memory_allocated(g) for g in gpus)
            peak = sum(torch.cuda.max_memory_allocated(g) for g in gpus)
            snap["gpu_memory_mb"] = round(allocated / 2**20)
            snap["gpu_memory_peak_mb"] = round(peak / 2**20)
        return snap
