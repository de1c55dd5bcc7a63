"""What a worker's GPU memory looks like now, for its heartbeat (and so ``/metrics``).

The write-up watched ``nvidia-smi`` to see an out-of-memory coming; the heartbeat carries the
same figures, per worker, in bytes:

- ``allocated``: held by live tensors of this process (``torch.cuda.memory_allocated``);
- ``reserved``: held by this process's caching allocator, live or cached for reuse
  (``memory_reserved``): what the GPU cannot give another process;
- ``used`` and ``total``: the whole device as the driver sees it (``mem_get_info``), every
  process on it included.

None on the CPU, or before the model put anything on a GPU (asking then would initialise CUDA
in a process that may not be meant to use it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["gpu_memory"]


def gpu_memory(device: Any) -> dict[str, int] | None:
    """The memory figures of ``device`` (a ``torch.device``), or None (see the module doc)."""
    if getattr(device, "type", None) != "cuda":
        return None
    import torch  # a worker on a GPU has imported it long since

    if not torch.cuda.is_initialized():
        return None
    free, total = torch.cuda.mem_get_info(device)
    return {
        "allocated": int(torch.cuda.memory_allocated(device)),
        "reserved": int(torch.cuda.memory_reserved(device)),
        "used": int(total - free),
        "total": int(total),
    }
