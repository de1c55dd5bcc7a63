"""The heartbeat's GPU memory figures: none off the GPU; on a GPU, what torch reports."""

from __future__ import annotations

import pytest
import torch

from internvl_queue.worker.gpu_memory import gpu_memory


def test_no_figures_off_the_gpu() -> None:
    assert gpu_memory(torch.device("cpu")) is None
    assert gpu_memory(None) is None  # no model loaded yet


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_figures_on_the_gpu() -> None:
    device = torch.device("cuda")
    held = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
    found = gpu_memory(device)
    assert found is not None
    assert held.numel() <= found["allocated"] <= found["reserved"] <= found["used"]
    assert found["used"] <= found["total"]
