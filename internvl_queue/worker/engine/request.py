"""What a task hands the engine (``EngineRequest``) and what it gets back (``EngineResult``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum

import torch

from .preprocess import Prepared

__all__ = ["EngineRequest", "EngineResult", "StopReason", "make_request"]


class StopReason(StrEnum):
    EOS = "eos"
    LENGTH = "length"
    TIMEOUT = "timeout"
    CANCELED = "canceled"
    OUT_OF_MEMORY = "out_of_memory"
    ERROR = "error"


@dataclass
class EngineRequest:
    input_ids: torch.Tensor  # [prompt_len], long, CPU
    pixel_values: torch.Tensor  # [tiles, 3, H, W], model dtype; on the GPU once uploaded
    max_new_tokens: int
    deadline: float | None = None  # time.monotonic() value after which the job stops
    is_canceled: Callable[[], bool] | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens
    # The job's priority rank (core/priority.py: 0 high, 1 normal, 2 low): a batch is formed
    # from the lowest rank first, and a request is admitted before those of a higher rank.
    priority: int = 1
    submitted_at: float = field(default_factory=time.monotonic)
    future: Future[EngineResult] = field(default_factory=Future)
    # Set when the engine admits the request under its memory budget: the pixels where the model
    # runs (on the GPU, or the host tensor itself on a CPU worker), and the copy's event on CUDA.
    # Cleared once the request is resolved, so that a finished job holds no device memory.
    device_pixels: torch.Tensor | None = None
    uploaded: torch.cuda.Event | None = None

    @property
    def tiles(self) -> int:
        return int(self.pixel_values.shape[0])

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass(frozen=True)
class EngineResult:
    tokens: list[int]
    stop: StopReason
    inference_ms: float  # the batch's GPU time, shared by its jobs
    batch_size: int
    error: str | None = None


def make_request(
    prepared: Prepared,
    *,
    max_new_tokens: int,
    deadline: float | None = None,
    is_canceled: Callable[[], bool] | None = None,
    ignore_eos: bool = False,
    priority: int = 1,
) -> EngineRequest:
    return EngineRequest(
        input_ids=prepared.input_ids,
        pixel_values=prepared.pixel_values,
        max_new_tokens=max_new_tokens,
        deadline=deadline,
        is_canceled=is_canceled,
        ignore_eos=ignore_eos,
        priority=priority,
    )
