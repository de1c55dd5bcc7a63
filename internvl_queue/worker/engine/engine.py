"""The engine thread: takes waiting requests, forms batches, runs them, resolves each future.

Every request is resolved exactly once, whatever happens: a result, a stop (timeout, canceled),
or an error. CUDA out of memory splits the batch in halves and retries them; a single request
that still does not fit is answered with ``StopReason.OUT_OF_MEMORY``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from .batching import select_batch
from .config import EngineConfig
from .decoder import BatchDecoder, DecodeOutput
from .request import EngineRequest, EngineResult, StopReason
from .stats import EngineStats

__all__ = ["Engine"]

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, loaded: Any, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.loaded = loaded
        self.decoder = BatchDecoder(
            loaded, cuda_graphs=self.config.cuda_graphs, max_workspaces=self.config.max_workspaces
        )
        self.stats = EngineStats()
        self._waiting: deque[EngineRequest] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        on_gpu = loaded.device.type == "cuda"
        self._upload_stream = torch.cuda.Stream(loaded.device) if on_gpu else None

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60) -> None:
        """Finish what is waiting, then stop the thread."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join(timeout)

    def submit(self, request: EngineRequest) -> EngineRequest:
        """Queue a request (from any thread). On CUDA its pixels are uploaded here, in the
        caller's thread on a side stream, so the engine thread never waits on host copies."""
        if self._upload_stream is not None:
            pinned = request.pixel_values.pin_memory()
            with torch.cuda.stream(self._upload_stream):
                request.pixel_values = pinned.to(self.loaded.device, non_blocking=True)
                request.uploaded = torch.cuda.Event()
                request.uploaded.record(self._upload_stream)
        with self._wakeup:
            if self._stopping:
                raise RuntimeError("the engine is stopping")
            self._waiting.append(request)
            self._wakeup.notify()
        return request

    # -- the thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except Exception as exc:  # never leave a task waiting on a future nobody resolves
                log.exception("engine error")
                self._fail([r for r in batch if not r.future.done()], exc)

    def _next_batch(self) -> list[EngineRequest] | None:
        with self._wakeup:
            while not self._waiting:
                if self._stopping:
                    return None
                self._wakeup.wait()
            # Give the first request a short while for company, unless a full batch is there.
            deadline = self._waiting[0].submitted_at + self.config.max_wait_ms / 1000
            while (
                len(self._waiting) < self.config.max_batch_jobs
                and not self._stopping
                and (remaining := deadline - time.monotonic()) > 0
            ):
                self._wakeup.wait(remaining)
            batch = select_batch(self._waiting, self.config)
            chosen = {id(r) for r in batch}
            self._waiting = deque(r for r in self._waiting if id(r) not in chosen)
            return batch

    def _run(self, batch: list[EngineRequest]) -> None:
        now = time.monotonic()
        runnable = []
        for request in batch:
            reason = _stop_reason(request, now)
            if reason is not None:
                self._resolve(request, DecodeOutput([], reason), 0.0, 0)
            else:
                runnable.append(request)
        if runnable:
            self._run_or_split(runnable)

    def _run_or_split(self, batch: Sequence[EngineRequest]) -> None:
        started = time.monotonic()

        def should_stop(row: int) -> StopReason | None:
            return _stop_reason(batch[row], time.monotonic())

        try:
            outputs = self.decoder.run(batch, should_stop, self.config.check_every)
        except torch.OutOfMemoryError:
            self.decoder.release_memory()
            self.stats.out_of_memory()
            if len(batch) == 1:
                log.warning("one job does not fit in GPU memory (%d tiles)", batch[0].tiles)
                self._resolve(batch[0], DecodeOutput([], StopReason.OUT_OF_MEMORY), 0.0, 1)
                return
            half = len(batch) // 2
            log.warning("out of GPU memory with %d jobs; splitting", len(batch))
            self._run_or_split(batch[:half])
            self._run_or_split(batch[half:])
            return
        except Exception as exc:  # a bug or a bad input: fail these jobs, keep the engine
            log.exception("batch of %d failed", len(batch))
            self._fail(batch, exc)
            return
        if self.loaded.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed_ms = (time.monotonic() - started) * 1000
        self.stats.batch_done(
            jobs=len(batch),
            tiles=sum(r.tiles for r in batch),
            tokens=sum(len(o.tokens) for o in outputs),
            seconds=elapsed_ms / 1000,
        )
        for request, output in zip(batch, outputs, strict=True):
            self._resolve(request, output, elapsed_ms, len(batch))

    def _fail(self, batch: Sequence[EngineRequest], exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        for request in batch:
            self._resolve(request, DecodeOutput([], StopReason.ERROR), 0.0, len(batch), error)

    @staticmethod
    def _resolve(
        request: EngineRequest,
        output: DecodeOutput,
        inference_ms: float,
        batch_size: int,
        error: str | None = None,
    ) -> None:
        request.future.set_result(
            EngineResult(
                tokens=output.tokens,
                stop=output.stop,
                inference_ms=inference_ms,
                batch_size=batch_size,
                error=error,
            )
        )


def _stop_reason(request: EngineRequest, now: float) -> StopReason | None:
    if request.expired(now):
        return StopReason.TIMEOUT
    if request.is_canceled is not None and request.is_canceled():
        return StopReason.CANCELED
    return None
