"""The engine thread: takes waiting requests, forms batches, runs them, resolves each future.

Every request is resolved exactly once, whatever happens: a result, a stop (timeout, canceled),
or an error. A batch that fails is split in halves and retried, so that only the request that
causes a failure fails: out of memory (GPU or host) ends that one request with
``StopReason.OUT_OF_MEMORY``, any other error with ``StopReason.ERROR``.

Two failures are not a request's fault, and end the engine instead: a sticky device error (after
an illegal memory access, every later kernel fails in that CUDA context) and a hang (the watchdog
sees no progress for ``stall_s`` while work waits). The engine is then *dead*: it takes no new
request, and every request it holds gets ``EngineDead`` through its future, so that the worker can
hand those jobs back to the queue rather than fail them, and exit for its supervisor to restart.

Memory: a request's pixels reach the device only when it is *admitted*, under a budget of tiles
(``EngineConfig.resident_tiles_budget``); the rest wait on the host, so a deep queue holds no
device memory. On CUDA an uploader thread pins and copies admitted pixels on a side stream, so
that the engine thread never waits on host copies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import InvalidStateError
from contextlib import suppress
from typing import Any

import torch

from .batching import enqueue, select_batch
from .config import EngineConfig
from .decoder import BatchDecoder, DecodeOutput
from .faults import is_out_of_memory, is_sticky_device_error
from .request import EngineRequest, EngineResult, StopReason
from .stats import EngineStats

__all__ = ["Engine", "EngineDead", "InvalidRequest"]

log = logging.getLogger(__name__)


class EngineDead(RuntimeError):
    """Raised (by ``submit``, and through the futures it held) once the engine cannot serve."""


class InvalidRequest(ValueError):
    """Raised by ``submit`` for a request that would fail any batch it joined."""


class _DeviceFault(Exception):
    """A sticky device error while running a batch: the engine must die."""


class Engine:
    def __init__(
        self,
        loaded: Any,
        config: EngineConfig | None = None,
        *,
        on_dead: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.loaded = loaded
        self.stats = EngineStats()
        self.decoder: Any = BatchDecoder(
            loaded,
            cuda_graphs=self.config.cuda_graphs,
            max_batch_jobs=self.config.max_batch_jobs,
            max_batch_tiles=self.config.max_batch_tiles,
            kv_budget=self.config.decode_kv_tokens,
            stats=self.stats,
        )
        self.on_dead = on_dead
        self.dead: str | None = None  # why the engine can no longer serve
        self.resident_tiles = 0  # tiles of admitted, unresolved requests (their pixels on device)
        self.progress_at = time.monotonic()  # the engine thread's last sign of life
        self._incoming: deque[EngineRequest] = deque()  # submitted; pixels on the host
        self._admitting: EngineRequest | None = None  # being uploaded
        self._waiting: deque[EngineRequest] = deque()  # admitted, waiting for a batch
        self._running: list[EngineRequest] = []
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._uploader = threading.Thread(target=self._admit_loop, name="upload", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        on_gpu = loaded.device.type == "cuda"
        self._upload_stream = torch.cuda.Stream(loaded.device) if on_gpu else None

    @property
    def context_tokens(self) -> int:
        """The model's context: prompt plus answer, in tokens."""
        return int(self.decoder.context_tokens)

    # -- life cycle --------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Prepare every decode shape (on CUDA: capture its graph, ~0.1 s each). ``start`` does it
        if this has not run; a worker runs it in a thread while its other parts start."""
        self.decoder.prepare()

    def start(self) -> None:
        """Prepare every decode shape (waiting for a ``prepare`` under way), then serve. The
        worker reports ready only after this, so that no batch ever waits for a graph capture."""
        self.decoder.prepare()
        self._uploader.start()
        self._thread.start()
        if self.config.stall_s > 0:
            self._watchdog.start()

    def stop(self, timeout: float = 60) -> None:
        """Finish what is waiting, then stop the threads (a dead engine's are not waited for)."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        if self.dead is None:
            for thread in (self._uploader, self._thread):
                if thread.is_alive():
                    thread.join(timeout)

    def submit(self, request: EngineRequest) -> EngineRequest:
        """Queue a request (from any thread); its pixels stay on the host until it is admitted."""
        problem = self.decoder.problem_with(request)
        if problem is not None:
            raise InvalidRequest(problem)
        with self._wakeup:
            if self.dead is not None:
                raise EngineDead(self.dead)
            if self._stopping:
                raise RuntimeError("the engine is stopping")
            # Admitted by priority: a high request does not wait for the pixels of low ones.
            enqueue(self._incoming, request)
            self._wakeup.notify_all()
        return request

    # -- admission: pixels to the device under the budget ---------------------------------------
    def _admissible(self) -> bool:
        """Whether the oldest incoming request fits the budget (alone, it always does)."""
        if not self._incoming:
            return False
        tiles = self._incoming[0].tiles
        return self.resident_tiles == 0 or (
            self.resident_tiles + tiles <= self.config.resident_tiles_budget
        )

    def _admit_loop(self) -> None:
        while True:
            with self._wakeup:
                while not self._admissible():
                    if self.dead is not None or (self._stopping and not self._incoming):
                        return
                    self._wakeup.wait()
                if self.dead is not None:
                    return
                request = self._incoming.popleft()
                self.resident_tiles += request.tiles
                self._admitting = request
            try:
                self._upload(request)
            except Exception as exc:
                if is_sticky_device_error(exc):
                    self._die(f"the GPU failed while uploading pixels: {exc}")
                    return
                log.exception("upload failed")
                self._resolve(request, DecodeOutput([], StopReason.ERROR), 0.0, 0, _text(exc))
            with self._wakeup:
                self._admitting = None
                if not request.future.done():
                    self._waiting.append(request)
                self._wakeup.notify_all()

    def _upload(self, request: EngineRequest) -> None:
        if self._upload_stream is None:  # the model runs on the host: nothing to copy
            request.device_pixels = request.pixel_values
            return
        # Not while the engine thread captures a decode graph: a CUDA call from another thread
        # can invalidate the capture (cudaErrorStreamCaptureInvalidated), which is sticky.
        with self.decoder.capture_lock:
            pinned = request.pixel_values.pin_memory()
            with torch.cuda.stream(self._upload_stream):
                request.device_pixels = pinned.to(self.loaded.device, non_blocking=True)
                request.uploaded = torch.cuda.Event()
                request.uploaded.record(self._upload_stream)

    # -- the engine thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except _DeviceFault as fault:
                self._die(str(fault))
                return
            except Exception as exc:  # never leave a task waiting on a future nobody resolves
                log.exception("engine error")
                self._fail([r for r in batch if not r.future.done()], exc)
            finally:
                with self._wakeup:
                    self._running = []
                    self.progress_at = time.monotonic()

    def _company_coming(self, deadline: float) -> bool:
        """Whether the batch being formed should wait: for its first request's short wait, or for
        requests submitted within that wait that the uploader is still admitting."""
        if len(self._waiting) >= self.config.max_batch_jobs or self._stopping:
            return False
        if time.monotonic() < deadline:
            return True
        if self._admitting is not None and self._admitting.submitted_at <= deadline:
            return True
        return self._admissible() and self._incoming[0].submitted_at <= deadline

    def _next_batch(self) -> list[EngineRequest] | None:
        with self._wakeup:
            while not self._waiting:
                if self.dead is not None:
                    return None
                if self._stopping and not self._incoming and self._admitting is None:
                    return None
                self._wakeup.wait()
            # Give the first request a short while for company, unless a full batch is there.
            deadline = self._waiting[0].submitted_at + self.config.max_wait_ms / 1000
            while self._company_coming(deadline) and self.dead is None:
                self._wakeup.wait(max(deadline - time.monotonic(), 0.005))
            if self.dead is not None:
                return None
            batch = select_batch(self._waiting, self.config)
            chosen = {id(r) for r in batch}
            self._waiting = deque(r for r in self._waiting if id(r) not in chosen)
            self._running = batch
            self.progress_at = time.monotonic()
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
            now = time.monotonic()
            self.progress_at = now  # asked every few decode steps: the engine is alive
            return _stop_reason(batch[row], now)

        try:
            outputs = self.decoder.run(batch, should_stop, self.config.check_every)
        except Exception as exc:
            if is_sticky_device_error(exc):
                log.critical("sticky device error with %d jobs: %s", len(batch), exc, exc_info=exc)
                raise _DeviceFault(f"the GPU failed and cannot recover: {_text(exc)}") from exc
            self._split(batch, exc)
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

    def _split(self, batch: Sequence[EngineRequest], exc: Exception) -> None:
        """Retry a failed batch in halves, until the request that fails is alone."""
        oom = is_out_of_memory(exc)
        if oom:
            self.decoder.release_memory()
            self.stats.out_of_memory()
        else:
            self.stats.error_split()
        if len(batch) == 1:
            if oom:
                log.warning("one job does not fit in memory (%d tiles)", batch[0].tiles)
                self._resolve(batch[0], DecodeOutput([], StopReason.OUT_OF_MEMORY), 0.0, 1)
            else:
                log.error("one job fails the model: %s", _text(exc), exc_info=exc)
                self._resolve(batch[0], DecodeOutput([], StopReason.ERROR), 0.0, 1, _text(exc))
            return
        what = "out of memory" if oom else f"error ({type(exc).__name__})"
        log.warning("%s with %d jobs; splitting", what, len(batch))
        half = len(batch) // 2
        self._run_or_split(batch[:half])
        self._run_or_split(batch[half:])

    # -- death -----------------------------------------------------------------------------------
    def _watch(self) -> None:
        """Declare the engine dead when it makes no progress for ``stall_s`` while work waits."""
        stall_s = self.config.stall_s
        while not self._stopping and self.dead is None:
            time.sleep(min(stall_s / 4, 1.0))
            with self._wakeup:
                pending = self._held()
                if not pending:
                    continue
                # Work that arrived while the engine idled counts from its arrival.
                since = self.progress_at
                if not self._running:
                    since = max(since, min(r.submitted_at for r in pending))
                stalled_s = time.monotonic() - since
            if stalled_s > stall_s:
                self._die(
                    f"the engine made no progress for {stalled_s:.0f} s with {len(pending)} "
                    f"job(s) in hand (INTERNVL_ENGINE_STALL_S={stall_s:g}): the GPU hangs"
                )

    def _held(self) -> list[Any]:
        """Every request the engine holds, in any stage (call under ``_wakeup``)."""
        held = [*self._running, *self._waiting, *self._incoming]
        if self._admitting is not None:
            held.append(self._admitting)
        return held

    def _die(self, reason: str) -> None:
        """Stop serving: every held request gets ``EngineDead``; then tell the owner."""
        with self._wakeup:
            if self.dead is not None:
                return
            self.dead = reason
            held = self._held()
            self._waiting.clear()
            self._incoming.clear()
            self._wakeup.notify_all()
        log.critical("engine dead: %s; handing back %d job(s)", reason, len(held))
        for request in held:
            with suppress(InvalidStateError):  # unless resolved just before
                request.future.set_exception(EngineDead(reason))
        if self.on_dead is not None:
            self.on_dead(reason)

    # -- outcomes --------------------------------------------------------------------------------
    def _fail(self, batch: Sequence[EngineRequest], exc: Exception) -> None:
        for request in batch:
            self._resolve(request, DecodeOutput([], StopReason.ERROR), 0.0, len(batch), _text(exc))

    def _resolve(
        self,
        request: EngineRequest,
        output: DecodeOutput,
        inference_ms: float,
        batch_size: int,
        error: str | None = None,
    ) -> None:
        with self._wakeup:
            if request.device_pixels is not None:  # its pixels leave the device budget
                request.device_pixels = request.uploaded = None
                self.resident_tiles -= request.tiles
                self._wakeup.notify_all()
        result = EngineResult(
            tokens=output.tokens,
            stop=output.stop,
            inference_ms=inference_ms,
            batch_size=batch_size,
            error=error,
        )
        with suppress(InvalidStateError):  # unless the engine died meanwhile and handed it back
            request.future.set_result(result)


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _stop_reason(request: EngineRequest, now: float) -> StopReason | None:
    if request.expired(now):
        return StopReason.TIMEOUT
    if request.is_canceled is not None and request.is_canceled():
        return StopReason.CANCELED
    return None
