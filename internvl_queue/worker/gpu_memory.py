"""What a worker's GPU memory looks like now, for its heartbeat (and so ``/metrics``).

The write-up watched ``nvidia-smi`` to see an out-of-memory coming; the heartbeat carries the
same figures, per worker, in bytes:

- ``allocated``: held by live tensors of this process (``torch.cuda.memory_allocated``);
- ``reserved``: held by this process's caching allocator, live or cached for reuse
  (``memory_reserved``): what the GPU cannot give another process;
- ``used`` and ``total``: the whole device as the driver sees it (``mem_get_info``), every
  process on it included.

A worker that spans GPUs (INTERNVL_GPUS_PER_WORKER) reports the sums over its GPUs: what its
model holds in all, and how full its GPUs are together.

None on the CPU, or before the model put anything on a GPU (asking then would initialise CUDA
in a process that may not be meant to use it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["gpu_memory"]


def gpu_memory(device: Any) -> dict[str, int] | None:
    """The memory figures of ``device`` (a ``torch.device``, or a sequence of them: summed), or
    None (see the module doc)."""
    devices = list(device) if isinstance(device, list | tuple) else [device]
    if not devices or any(getattr(d, "type", None) != "cuda" for d in devices):
        return None
    import torch  # a worker on a GPU has imported it long since

    if not torch.cuda.is_initialized():
        return None
    figures = dict.fromkeys(("allocated", "reserved", "used", "total"), 0)
    for each in devices:
        free, total = torch.cuda.mem_get_info(each)
        figures["allocated"] += int(torch.cuda.memory_allocated(each))
        figures["reserved"] += int(torch.cuda.memory_reserved(each))
        figures["used"] += int(total - free)
        figures["total"] += int(total)
    return figures
