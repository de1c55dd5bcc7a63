"""``internvl-queue worker --gpus all|0,1,... [--gpus-per-worker N]``: one warm worker process per
GPU, or per group of N GPUs, each pinned to its GPUs.

Each child is an ordinary ``internvl-queue worker`` whose ``CUDA_VISIBLE_DEVICES`` holds only its
GPU (it sees it as ``cuda:0`` and loads the model once, there) and whose ``INTERNVL_GPU_INDEX``
names that GPU in its heartbeat. The children share nothing but Redis: the GPUs of one host scale
exactly like the GPUs of several hosts consuming the same queue.

With ``--gpus-per-worker N`` (a model larger than one GPU) the listed GPUs are cut, in the order
given, into groups of N: each child sees its group (``CUDA_VISIBLE_DEVICES=0,1``), loads the model
across it (``INTERNVL_GPUS_PER_WORKER``, ``worker/device_map.py``) and reports it
(``INTERNVL_GPU_GROUP``). A grouping that cannot be made is refused before any child starts.

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

__all__ = ["child_env", "group_gpus", "parse_gpus", "run_gpu_workers"]


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
    if any(g < 0 for g in gpus):
        raise ValueError(f"--gpus must list non-negative indices (not {spec!r})")
    twice = sorted({g for g in gpus if gpus.count(g) > 1})
    if twice:
        listed = ", ".join(str(g) for g in twice)
        raise ValueError(
            f"--gpus {spec} lists GPU {listed} more than once: list each GPU once (a GPU "
            "belongs to one worker)"
        )
    _visible_devices(gpus)  # an index past CUDA_VISIBLE_DEVICES is refused here
    return gpus


def group_gpus(gpus: list[int], per_worker: int) -> list[list[int]]:
    """The GPUs of each worker: ``gpus`` cut, in order, into groups of ``per_worker``;
    ``ValueError`` (one sentence saying what to do) when that cannot be done."""
    if per_worker < 1:
        raise ValueError(f"--gpus-per-worker must be 1 or more (not {per_worker})")
    listed = ",".join(str(g) for g in gpus)
    if per_worker > len(gpus):
        raise ValueError(
            f"--gpus-per-worker {per_worker} needs at least {per_worker} GPUs, but --gpus gives "
            f"{len(gpus)} ({listed}): list more GPUs or lower --gpus-per-worker"
        )
    if len(gpus) % per_worker:
        raise ValueError(
            f"--gpus gives {len(gpus)} GPUs ({listed}), which do not split into groups of "
            f"{per_worker}: list a multiple of {per_worker} GPUs or change --gpus-per-worker"
        )
    return [gpus[i : i + per_worker] for i in range(0, len(gpus), per_worker)]


def _visible_devices(gpus: list[int], inherited: str | None = None) -> list[str]:
    """Each index as the parent sees it, translated through its own CUDA_VISIBLE_DEVICES."""
    if inherited is None:
        inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not inherited:
        return [str(g) for g in gpus]
    visible = [d.strip() for d in inherited.split(",") if d.strip()]
    if max(gpus) >= len(visible):
        raise ValueError(
            f"--gpus names GPU {max(gpus)}, but CUDA_VISIBLE_DEVICES={inherited} shows "
            f"{len(visible)}: count --gpus indices from 0 within CUDA_VISIBLE_DEVICES"
        )
    return [visible[g] for g in gpus]


def child_env(group: list[int], environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the worker owning ``group`` (host GPU indices, as the parent sees
    them): its GPUs alone visible, how many to span, and what to report."""
    base = dict(os.environ if environ is None else environ)
    devices = _visible_devices(group, base.get("CUDA_VISIBLE_DEVICES", ""))
    return {
        **base,
        "CUDA_VISIBLE_DEVICES": ",".join(devices),
        "INTERNVL_GPU_INDEX": str(group[0]),
        "INTERNVL_GPU_GROUP": ",".join(str(g) for g in group),
        "INTERNVL_GPUS_PER_WORKER": str(len(group)),
    }


def _worker(group: list[int], loglevel: str, stop_timeout_s: float) -> Child:
    env = child_env(group)
    command = [sys.executable, "-m", "internvl_queue", "worker", f"--loglevel={loglevel}"]
    what = f"GPU {group[0]}" if len(group) == 1 else f"GPUs {','.join(str(g) for g in group)}"
    visible = env["CUDA_VISIBLE_DEVICES"]

    def started(child: Child) -> None:
        assert child.process is not None
        _say(f"{what}: worker pid {child.process.pid} (CUDA_VISIBLE_DEVICES={visible})")

    return Child(f"{what}'s worker", command, env, stop_timeout_s, on_start=started)


def run_gpu_workers(groups: list[list[int]], loglevel: str, *, stop_timeout_s: float = 120) -> int:
    """Supervise one worker per group of GPUs (``group_gpus``; groups of one: one per GPU)."""
    stop = StopRequest()
    supervisor = Supervisor(_say)
    for group in groups:
        if not stop.requested:
            supervisor.add(_worker(group, loglevel, stop_timeout_s))
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
