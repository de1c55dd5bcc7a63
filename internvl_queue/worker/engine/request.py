"""What a task hands the engine (``EngineRequest``) and what it gets back (``EngineResult``).

``prepare_request`` runs in the task's own thread, off the GPU thread: applying the chat
template, tiling and normalising the images, tokenising.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from PIL import Image

from ..model import build_inputs

__all__ = ["EngineRequest", "EngineResult", "StopReason", "prepare_request"]


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
    pixel_values: torch.Tensor  # [tiles, 3, H, W], model dtype, CPU
    max_new_tokens: int
    deadline: float | None = None  # time.monotonic() value after which the job stops
    is_canceled: Callable[[], bool] | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens
    preprocess_ms: float = 0.0
    submitted_at: float = field(default_factory=time.monotonic)
    future: Future[EngineResult] = field(default_factory=Future)

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
    prompt_tokens: int
    image_tiles: int
    preprocess_ms: float
    queue_ms: float  # waiting for a batch
    inference_ms: float  # the batch's GPU time, shared by its jobs
    batch_size: int
    error: str | None = None


def prepare_request(
    processor: Any,
    images: list[Image.Image],
    question: str,
    *,
    max_tiles: int,
    max_new_tokens: int,
    dtype: torch.dtype,
    deadline: float | None = None,
    is_canceled: Callable[[], bool] | None = None,
    ignore_eos: bool = False,
) -> EngineRequest:
    started = time.perf_counter()
    inputs = build_inputs(processor, images, question, max_tiles=max_tiles)
    pixel_values = inputs["pixel_values"].to(dtype)
    return EngineRequest(
        input_ids=inputs["input_ids"][0],
        pixel_values=pixel_values,
        max_new_tokens=max_new_tokens,
        deadline=deadline,
        is_canceled=is_canceled,
        ignore_eos=ignore_eos,
        preprocess_ms=(time.perf_counter() - started) * 1000,
    )
