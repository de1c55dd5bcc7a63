"""``internvl-queue worker --gpus all|0,1,...``: one warm worker process per GPU, each pinned to it.

Each child is an ordinary ``internvl-queue worker`` whose ``CUDA_VISIBLE_DEVICES`` holds only its
GPU (it sees it as ``cuda:0`` and loads the model once, there) and whose ``INTERNVL_GPU_INDEX``
names that GPU in its heartbeat. The children share nothing but Redis: the GPUs of one host scale
exactly like the GPUs of several hosts consuming the same queue.

The parent only supervises, with the policy of ``cli.supervisor`` (the same as ``up``'s): the
children die with it, and a child that exits on its own is started again after a back-off, so one
failing GPU does not take the others down (its unfinished jobs come back through the broker); a
GPU whose worker keeps dying at once is given up, and the parent exits when none is left. SIGTERM
or SIGINT is passed on to every child (Celery's warm shutdown: the batches in flight finish and
their results are stored) and the parent waits for them all.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from .stop_request import StopRequest
from .supervisor import Child, Supervisor

__all__ = ["parse_gpus", "run_gpu_workers"]


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


def _visible_devices(gpus: list[int]) -> list[str]:
    """Each index as the parent sees it, translated through its own CUDA_VISIBLE_DEVICES."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not inherited:
        return [str(g) for g in gpus]
    visible = [d.strip() for d in inherited.split(",") if d.strip()]
    if max(gpus) >= len(visible):
        raise ValueError(f"--gpus {gpus} but CUDA_VISIBLE_DEVICES={inherited!r}")
    return [visible[g] for g in gpus]


def _worker(gpu: int, device: str, loglevel: str, stop_timeout_s: float) -> Child:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": device, "INTERNVL_GPU_INDEX": str(gpu)}
    command = [sys.executable, "-m", "internvl_queue", "worker", f"--loglevel={loglevel}"]

    def started(child: Child) -> None:
        assert child.process is not None
        _say(f"GPU {gpu}: worker pid {child.process.pid} (CUDA_VISIBLE_DEVICES={device})")

    return Child(f"GPU {gpu}'s worker", command, env, stop_timeout_s, on_start=started)


def run_gpu_workers(gpus: list[int], loglevel: str, *, stop_timeout_s: float = 120) -> int:
    stop = StopRequest()
    supervisor = Supervisor(_say)
    for gpu, device in zip(gpus, _visible_devices(gpus), strict=True):
        if not stop.requested:
            supervisor.add(_worker(gpu, device, loglevel, stop_timeout_s))
    exit_code = 0
    while not stop.requested:
        supervisor.poll()
        if all(child.given_up for child in supervisor.children):
            _say("no GPU worker is left running; stopping")
            exit_code = 1
            break
        time.sleep(0.2)

    _say("stopping the workers (warm shutdown: batches in flight finish)")
    supervisor.stop_together()
    _say("stopped")
    return exit_code
