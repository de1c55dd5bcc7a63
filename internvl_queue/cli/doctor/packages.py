"""Is the GPU worker's stack (torch, torchvision, transformers) installed and importable?

The base install (API, webhook worker) has none of it, on purpose; this says so and what to install
instead of failing on the first ``import torch``.
"""

from __future__ import annotations

import importlib
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

from .report import Check, Level

__all__ = ["WORKER_EXTRA", "check_packages"]

WORKER_EXTRA = "pip install 'internvl-queue[worker]'"
_WORKER_STACK = ("torch", "torchvision", "transformers")


def check_packages() -> list[Check]:
    checks = [_python()]
    missing: list[str] = []
    for name in _WORKER_STACK:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # installed, but one of its own dependencies is missing
                checks.append(_broken(name, exc))
            else:
                missing.append(name)
            continue
        except Exception as exc:  # a broken install raises anything at import time
            checks.append(_broken(name, exc))
            continue
        checks.append(Check(name, Level.OK, _describe(name, module)))
    if missing:
        checks.append(
            Check(
                "worker stack",
                Level.FAIL,
                f"{', '.join(missing)} not installed: this is the base install (API and webhook "
                f"worker only); for a GPU worker: {WORKER_EXTRA}",
            )
        )
    return checks


def _python() -> Check:
    try:
        ours = version("internvl-queue")
    except PackageNotFoundError:
        ours = "(not installed: running from a source tree)"
    return Check(
        "internvl-queue",
        Level.OK,
        f"{ours} on Python {platform.python_version()} ({sys.executable})",
    )


def _describe(name: str, module: object) -> str:
    found = str(getattr(module, "__version__", "unknown version"))
    if name == "torch":
        cuda = getattr(getattr(module, "version", None), "cuda", None)
        found += f", built for CUDA {cuda}" if cuda else ", a CPU-only build"
    return found


def _broken(name: str, exc: Exception) -> Check:
    return Check(
        name,
        Level.FAIL,
        f"installed but cannot be imported ({type(exc).__name__}: {exc}); reinstall it: "
        f"{WORKER_EXTRA} --force-reinstall",
    )
