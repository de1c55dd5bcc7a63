"""The write-up's GPU check: what CUDA devices torch sees, and whether the worker can use them.

The worker computes in bf16 on a GPU and turns TF32 on for its float32 parts; both are native from
compute capability 8.0 (Ampere) on. ``INTERNVL_DEVICE`` decides what a missing GPU means: ``cuda``
cannot start, ``auto`` falls back to the CPU.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from .report import Check, Level, human_bytes

__all__ = ["DeviceReport", "GpuFacts", "check_device", "describe_gpu", "driver_version"]

_LOW_FREE_MEMORY = 8 * 1024**3  # the model, its KV cache and a batch of tiles need several GiB
_NVIDIA_SMI_TIMEOUT_S = 5


@dataclass(frozen=True)
class GpuFacts:
    """What torch says about one GPU."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    capability: tuple[int, int]


@dataclass(frozen=True)
class DeviceReport:
    checks: list[Check]
    runs_on: str | None  # where a worker would compute, for the verdict; None if it cannot start


def describe_gpu(gpu: GpuFacts) -> Check:
    major, minor = gpu.capability
    ampere_or_newer = major >= 8
    support = "yes" if ampere_or_newer else "no"
    detail = (
        f"{gpu.name}, {human_bytes(gpu.free_bytes)} free of {human_bytes(gpu.total_bytes)}, "
        f"compute capability {major}.{minor}, bf16 {support}, TF32 {support}"
    )
    if not ampere_or_newer:
        return Check(
            f"GPU {gpu.index}",
            Level.WARN,
            f"{detail}: the worker computes in bf16, which this GPU only emulates, slowly "
            "(compute capability 8.0, Ampere, or newer is native)",
        )
    if gpu.free_bytes < _LOW_FREE_MEMORY:
        return Check(
            f"GPU {gpu.index}",
            Level.WARN,
            f"{detail}: other processes hold most of its memory; the model and its batches "
            "need several GiB",
        )
    return Check(f"GPU {gpu.index}", Level.OK, detail)


def driver_version() -> tuple[str, int] | None:
    """(driver version, GPUs the driver sees) from nvidia-smi, else from pynvml; None if neither."""
    if shutil.which("nvidia-smi"):
        try:
            done = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=_NVIDIA_SMI_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
        if done.returncode != 0 or not lines:
            return None
        return lines[0], len(lines)
    try:
        pynvml: Any = importlib.import_module("pynvml")  # optional: nvidia-ml-py
        pynvml.nvmlInit()
        try:
            found = pynvml.nvmlSystemGetDriverVersion()
            count = int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # not installed, or no driver / library: nothing to report
        return None
    return (found.decode() if isinstance(found, bytes) else str(found)), count


def check_device(device: str, gpus_per_worker: int = 1) -> DeviceReport:
    """``device`` is INTERNVL_DEVICE: auto, cpu or cuda; ``gpus_per_worker`` is
    INTERNVL_GPUS_PER_WORKER (a worker spanning that many GPUs)."""
    driver = driver_version()
    try:
        import torch
    except Exception:  # the packages check already says what to install
        seen = f"; nvidia-smi sees {driver[1]} GPU(s), driver {driver[0]}" if driver else ""
        return DeviceReport([Check("CUDA", Level.WARN, f"not checked without torch{seen}")], None)
    if not torch.cuda.is_available():
        return _no_gpu(device, torch.version.cuda, driver)
    count = torch.cuda.device_count()
    checks = [Check("CUDA", Level.OK, _cuda_summary(count, torch.version.cuda, driver))]
    names = []
    for index in range(count):
        try:
            free, total = torch.cuda.mem_get_info(index)  # creates a context: proves it usable
            properties = torch.cuda.get_device_properties(index)
        except Exception as exc:
            checks.append(
                Check(f"GPU {index}", Level.FAIL, f"unusable: {type(exc).__name__}: {exc}")
            )
            continue
        facts = GpuFacts(index, properties.name, total, free, (properties.major, properties.minor))
        names.append(facts.name)
        checks.append(describe_gpu(facts))
    if device == "cpu":
        checks.append(
            Check(
                "device",
                Level.WARN,
                f"INTERNVL_DEVICE=cpu: the worker will not use the {count} GPU(s), and runs "
                "slowly on the CPU (unset it, or set it to auto or cuda)",
            )
        )
        return DeviceReport(checks, "the CPU, slowly")
    if not names:
        return DeviceReport(checks, None)
    distinct = ", ".join(dict.fromkeys(names))
    if gpus_per_worker > 1:
        if gpus_per_worker > len(names):
            checks.append(
                Check(
                    "GPUs per worker",
                    Level.FAIL,
                    f"INTERNVL_GPUS_PER_WORKER={gpus_per_worker} but {len(names)} usable GPU(s) "
                    "are visible: the worker could not load its model; give it more GPUs or "
                    "lower INTERNVL_GPUS_PER_WORKER",
                )
            )
            return DeviceReport(checks, None)
        return DeviceReport(
            checks,
            f"{gpus_per_worker} GPUs ({distinct}) with the model across them (no CUDA graphs)",
        )
    return DeviceReport(checks, f"the GPU ({distinct}; one worker per GPU with --gpus all)")


def _cuda_summary(count: int, built_for: str | None, driver: tuple[str, int] | None) -> str:
    summary = f"{count} GPU(s) visible, torch built for CUDA {built_for}"
    summary += (
        f", driver {driver[0]}"
        if driver
        else ", driver version unknown (neither nvidia-smi nor pynvml answered)"
    )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        summary += f", CUDA_VISIBLE_DEVICES={visible}"
    return summary


def _no_gpu(device: str, built_for: str | None, driver: tuple[str, int] | None) -> DeviceReport:
    if built_for is None:
        why = "no CUDA GPU: this torch is a CPU-only build"
    elif driver is not None and driver[1] > 0:
        # The classic container or upgrade mistake: the GPU is there, torch cannot reach it.
        why = (
            f"no CUDA GPU usable by torch, although nvidia-smi sees {driver[1]} (driver "
            f"{driver[0]}): the driver may be too old for torch's CUDA {built_for}, or "
            "CUDA_VISIBLE_DEVICES hides them"
        )
    else:
        why = "no CUDA GPU"
    if device == "cuda":
        return DeviceReport(
            [
                Check(
                    "CUDA",
                    Level.FAIL,
                    f"{why}, and INTERNVL_DEVICE=cuda: the worker could not start; run it on a "
                    "GPU host (in docker: --gpus all) or set INTERNVL_DEVICE=auto or cpu",
                )
            ],
            None,
        )
    return DeviceReport(
        [
            Check(
                "CUDA",
                Level.WARN,
                f"{why}: the worker would run on the CPU, slowly (INTERNVL_DEVICE={device})",
            )
        ],
        "the CPU, slowly",
    )
