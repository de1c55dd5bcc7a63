"""Telling apart the errors a batch can raise: a request's fault, memory, or a dead device.

Pure functions of the exception, so that the engine's policy (split, fail alone, or die) is
decided in one place and tested without a GPU.
"""

from __future__ import annotations

import torch

__all__ = ["is_out_of_memory", "is_sticky_device_error"]

# What CUDA, cuBLAS and cuDNN say when the context is broken for good: after these every later
# kernel of the process fails too (vLLM's EngineDeadError, cog's defunct worker).
_STICKY_MARKERS = (
    "CUDA error",
    "CUDA driver error",
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "CUBLAS_STATUS_INTERNAL_ERROR",
    "CUDNN_STATUS_EXECUTION_FAILED",
    "CUDNN_STATUS_INTERNAL_ERROR",
)

# What torch's CPU allocator says when the host is out of memory.
_HOST_OOM_MARKERS = ("can't allocate memory",)  # torch's DefaultCPUAllocator says so too


def is_out_of_memory(exc: BaseException) -> bool:
    """GPU or host memory ran out: the batch may fit in smaller parts."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _HOST_OOM_MARKERS)


def is_sticky_device_error(exc: BaseException) -> bool:
    """The device failed in a way no retry in this process can fix."""
    if is_out_of_memory(exc):
        return False
    if isinstance(exc, torch.AcceleratorError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _STICKY_MARKERS)
