"""Turning a job's image bytes and question into model inputs, off the GPU thread.

Decoding, tiling, normalising and tokenising cost a few milliseconds of mostly-Python work per
job; in threads they serialise on the GIL and cap a worker far below the GPU's rate. On a GPU
worker they therefore run in a pool of processes (spawned, CPU only, one thread each), each
holding its own processor; on a CPU worker, in one thread of the worker (its torch operations
use the process's intra-op pool, so one thread keeps the worker's thread count bounded however
many jobs it holds).

A child that dies (the OOM killer, a crash in a native decoder) breaks the whole pool; the pool
is then replaced and the job tried once more, so that no job is lost to another's crash. A job
that kills its child twice is the cause and fails. Every wait is bounded by the job's deadline.
Children die with the worker (``threads.die_with_parent``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import torch

from ...core.errors import InferenceError, JobTimedOut, PromptTooLong
from ...core.images import decode_rgb
from ..model import build_inputs, question_tokens
from ..preprocess_child import child_processor, init_preprocess_child

__all__ = ["Prepared", "Preprocessor", "default_processes", "prepare"]

log = logging.getLogger(__name__)


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
    max_question_tokens: int | None = None,
) -> Prepared:
    started = time.perf_counter()
    # Counted before any image is decoded: a question too long costs a tokenisation only.
    count = question_tokens(processor, question)
    if max_question_tokens is not None and count > max_question_tokens:
        raise PromptTooLong(
            f"the question is {count} tokens long and this service accepts at most "
            f"{max_question_tokens} (INTERNVL_MAX_QUESTION_TOKENS): shorten the question"
        )
    pictures = [decode_rgb(data, max_pixels=max_pixels) for data in images]
    inputs = build_inputs(processor, pictures, question, max_tiles=max_tiles)
    return Prepared(
        input_ids=inputs["input_ids"][0],
        pixel_values=inputs["pixel_values"].to(dtype),
        preprocess_ms=(time.perf_counter() - started) * 1000,
    )


def _prepare_in_pool(
    images: list[bytes],
    question: str,
    max_tiles: int,
    dtype: torch.dtype,
    max_pixels: int,
    max_question_tokens: int | None,
) -> Prepared:
    return prepare(
        child_processor(),
        images,
        question,
        max_tiles=max_tiles,
        dtype=dtype,
        max_pixels=max_pixels,
        max_question_tokens=max_question_tokens,
    )


class Preprocessor:
    def __init__(
        self,
        model_id: str,
        processor: Any,
        dtype: torch.dtype,
        *,
        processes: int,
        max_pixels: int,
        max_question_tokens: int | None = None,
        wait: bool = True,
    ) -> None:
        """``processor`` serves the in-thread mode (``processes`` 0); a pool's processes load
        their own, so it may be None then. ``wait=False`` returns while the processes start
        (call ``wait_started`` before serving): a worker loads its model meanwhile."""
        if processes <= 0 and processor is None:
            raise ValueError("preparing in a thread (processes=0) needs the processor")
        self.model_id, self.processor, self.dtype = model_id, processor, dtype
        self.processes, self.max_pixels = processes, max_pixels
        self.max_question_tokens = max_question_tokens
        self.replacements = 0  # pools replaced after a child died
        self._lock = threading.Lock()
        self.pool: Executor = self._new_pool()
        # Every process is started now (a task each), so that no job waits for one to load.
        self._starting = [self.pool.submit(time.sleep, 0.2) for _ in range(max(processes, 0))]
        if wait:
            self.wait_started()

    def wait_started(self) -> None:
        """Return once every process has started and loaded its processor."""
        for future in self._starting:
            future.result()
        self._starting = []

    def _new_pool(self) -> Executor:
        if self.processes <= 0:
            return ThreadPoolExecutor(1, thread_name_prefix="preprocess")
        return ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_preprocess_child,
            initargs=(os.getpid(), self.model_id),
        )

    def children(self) -> list[int]:
        """Pids of the pool's processes (none on a CPU worker)."""
        processes = getattr(self.pool, "_processes", None) or {}
        return list(processes)

    def __call__(
        self, images: list[bytes], question: str, *, max_tiles: int, deadline: float | None = None
    ) -> Prepared:
        for attempt in (1, 2):
            pool = self.pool
            try:
                return _wait(self._submit(pool, images, question, max_tiles), deadline)
            except BrokenProcessPool:
                self._replace(pool)
                if attempt == 2:
                    raise InferenceError(
                        "preparing this job's input killed its process twice; it is not retried"
                    ) from None
                log.warning("a preprocessing process died; the job is tried again on a new pool")
        raise AssertionError("unreachable")

    def _submit(
        self, pool: Executor, images: list[bytes], question: str, max_tiles: int
    ) -> Future[Prepared]:
        if isinstance(pool, ThreadPoolExecutor):
            return pool.submit(
                prepare,
                self.processor,
                images,
                question,
                max_tiles=max_tiles,
                dtype=self.dtype,
                max_pixels=self.max_pixels,
                max_question_tokens=self.max_question_tokens,
            )
        return pool.submit(
            _prepare_in_pool,
            images,
            question,
            max_tiles,
            self.dtype,
            self.max_pixels,
            self.max_question_tokens,
        )

    def _replace(self, broken: Executor) -> None:
        """A new pool for the broken one (once, however many jobs saw it break)."""
        with self._lock:
            if self.pool is not broken:
                return
            self.pool = self._new_pool()
            self.replacements += 1
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self, wait: bool = True) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=True)


def _wait(future: Future[Prepared], deadline: float | None) -> Prepared:
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    try:
        return future.result(timeout=timeout)
    except TimeoutError:
        future.cancel()
        raise JobTimedOut(
            "the job passed its deadline (timeout_s) while its input was being prepared"
        ) from None
