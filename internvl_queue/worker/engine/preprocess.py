"""Turning a job's image bytes and question into model inputs, off the GPU thread.

Decoding, tiling, normalising and tokenising cost a few milliseconds of mostly-Python work per
job; in threads they serialise on the GIL and cap a worker far below the GPU's rate. On a GPU
worker they therefore run in a pool of processes (spawned, CPU only), each holding its own
processor; on a CPU worker, in the calling thread.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from ...core.images import decode_rgb
from ..model import build_inputs

__all__ = ["Prepared", "Preprocessor", "default_processes"]


@dataclass(frozen=True)
class Prepared:
    input_ids: torch.Tensor  # [prompt_len], long
    pixel_values: torch.Tensor  # [tiles, 3, H, W], model dtype
    preprocess_ms: float


def default_processes(device_type: str) -> int:
    """CPU workers prepare in-thread (the model needs the cores); GPU workers use most cores."""
    if device_type != "cuda":
        return 0
    return max(1, min(16, (os.cpu_count() or 2) - 2))


def prepare(
    processor: Any,
    images: list[bytes],
    question: str,
    *,
    max_tiles: int,
    dtype: torch.dtype,
    max_pixels: int,
) -> Prepared:
    started = time.perf_counter()
    pictures = [decode_rgb(data, max_pixels=max_pixels) for data in images]
    inputs = build_inputs(processor, pictures, question, max_tiles=max_tiles)
    return Prepared(
        input_ids=inputs["input_ids"][0],
        pixel_values=inputs["pixel_values"].to(dtype),
        preprocess_ms=(time.perf_counter() - started) * 1000,
    )


_PROCESSOR: Any = None  # one per pool process


def _load_processor(model_id: str) -> None:
    global _PROCESSOR
    from transformers import AutoProcessor

    torch.set_num_threads(1)  # many of these run side by side
    _PROCESSOR = AutoProcessor.from_pretrained(model_id)


def _prepare_in_pool(
    images: list[bytes], question: str, max_tiles: int, dtype: torch.dtype, max_pixels: int
) -> Prepared:
    return prepare(
        _PROCESSOR, images, question, max_tiles=max_tiles, dtype=dtype, max_pixels=max_pixels
    )


class Preprocessor:
    def __init__(
        self, model_id: str, processor: Any, dtype: torch.dtype, *, processes: int, max_pixels: int
    ) -> None:
        self.processor, self.dtype, self.max_pixels = processor, dtype, max_pixels
        self.pool: ProcessPoolExecutor | None = None
        if processes > 0:
            self.pool = ProcessPoolExecutor(
                processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_load_processor,
                initargs=(model_id,),
            )
            # Start every process now, so that no job waits for a processor to load.
            for future in [self.pool.submit(time.sleep, 0.2) for _ in range(processes)]:
                future.result()

    def __call__(self, images: list[bytes], question: str, *, max_tiles: int) -> Prepared:
        if self.pool is None:
            return prepare(
                self.processor,
                images,
                question,
                max_tiles=max_tiles,
                dtype=self.dtype,
                max_pixels=self.max_pixels,
            )
        return self.pool.submit(
            _prepare_in_pool, images, question, max_tiles, self.dtype, self.max_pixels
        ).result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
