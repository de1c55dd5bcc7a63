"""``internvl-queue worker --gpus all|0,1,...``: one warm worker process per GPU, each pinned to it.

Each child is an ordinary ``internvl-queue worker`` whose ``CUDA_VISIBLE_DEVICES`` holds only its
GPU (it sees it as ``cuda:0`` and loads the model once, there) and whose ``INTERNVL_GPU_INDEX``
names that GPU in its heartbeat. The children share nothing but Redis: the GPUs of one host scale
exactly like the GPUs of several hosts consuming the same queue.

The parent only supervises. SIGTERM or SIGINT is passed on to every child (Celery's warm
shutdown: the batches in flight finish and their results are stored) and the parent waits for
them all. A child that exits on its own is started again after a back-off, so one failing GPU does
not take the others down; its unfinished jobs come back through the broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from .stop_request import StopRequest

__all__ = ["parse_gpus", "run_gpu_workers"]

# A child that ran this long before dying is restarted at once; one that keeps dying sooner
# waits longer each time (a model that cannot load must not spin).
_HEALTHY_RUN_S = 60.0
_MAX_BACKOFF_S = 60.0


def _say(message: str) -> None:
    print(f"[internvl-queue worker --gpus] {message}", file=sys.stderr, flush=True)


def cuda_device_count() -> int:
    """GPUs visible to this process. torch counts them through NVML: no CUDA context is made
    here, and the children are started fresh (never forked) anyway."""
    import torch

    return int(torch.cuda.device_count())


def parse_gpus(spec: str, count: Callable[[], int] = cuda_device_count) -> list[int]:
    """``all`` or a comma-separated list of distinct GPU indices; ``ValueError`` otherwise."""
    if spec.strip() == "all":
        found = count()
        if found == 0:
            raise ValueError("--gpus all: no CUDA GPU is visible")
        return list(range(found))
    try:
        gpus = [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(f"--gpus must be 'all' or indices like 0,1 (not {spec!r})") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus must list distinct non-negative indices (not {spec!r})")
    _visible_devices(gpus)  # an index past CUDA_VISIBLE_DEVICES is refused here
    return gpus


@dataclass
class _Child:
    gpu: int
    device: str  # what CUDA_VISIBLE_DEVICES holds for it
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # consecutive early deaths
    restart_at: float = 0.0


def _visible_devices(gpus: list[int]) -> list[str]:
    """Each index as the parent sees it, translated through its own CUDA_VISIBLE_DEVICES."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not inherited:
        return [str(g) for g in gpus]
    visible = [d.strip() for d in inherited.split(",") if d.strip()]
    if max(gpus) >= len(visible):
        raise ValueError(f"--gpus {gpus} but CUDA_VISIBLE_DEVICES={inherited!r}")
    return [visible[g] for g in gpus]


def _start(child: _Child, loglevel: str) -> None:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": child.device,
        "INTERNVL_GPU_INDEX": str(child.gpu),
    }
    command = [sys.executable, "-m", "internvl_queue", "worker", f"--loglevel={loglevel}"]
    # Its own session: a Ctrl-C in the terminal reaches the parent only, which then stops the
    # children in order instead of all of them being interrupted at once.
    child.process = subprocess.Popen(command, env=env, start_new_session=True)
    child.started_at = time.monotonic()
    _say(f"GPU {child.gpu}: worker pid {child.process.pid} (CUDA_VISIBLE_DEVICES={child.device})")


def _reap(child: _Child, now: float) -> None:
    """Schedule a restart for a child that exited on its own."""
    assert child.process is not None
    code = child.process.returncode
    ran = now - child.started_at
    child.failures = 0 if ran >= _HEALTHY_RUN_S else child.failures + 1
    delay = min(2.0 ** (child.failures - 1), _MAX_BACKOFF_S) if child.failures else 0.0
    child.process, child.restart_at = None, now + delay
    _say(
        f"GPU {child.gpu}: worker exited with code {code} after {ran:.0f} s; "
        f"restarting in {delay:.0f} s"
    )


def run_gpu_workers(gpus: list[int], loglevel: str, *, stop_timeout_s: float = 120) -> int:
    children = [
        _Child(gpu, device) for gpu, device in zip(gpus, _visible_devices(gpus), strict=True)
    ]
    stop = StopRequest()
    for child in children:
        _start(child, loglevel)
    while not stop.requested:
        now = time.monotonic()
        for child in children:
            if child.process is not None and child.process.poll() is not None:
                _reap(child, now)
            if child.process is None and now >= child.restart_at and not stop.requested:
                _start(child, loglevel)
        time.sleep(0.2)

    _say("stopping the workers (warm shutdown: batches in flight finish)")
    running = [c.process for c in children if c.process is not None and c.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + stop_timeout_s
    for process in running:
        try:
            process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            _say(f"worker pid {process.pid} did not stop in {stop_timeout_s:.0f} s; killing it")
            process.kill()
            process.wait()
    _say("stopped")
    return 0
