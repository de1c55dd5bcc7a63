"""Where each part of the model goes when one worker spans GPUs (``INTERNVL_GPUS_PER_WORKER``).

A pipeline split, in the form transformers' ``from_pretrained(device_map=...)`` takes (it places
each module's weights there and accelerate's hooks move each module's inputs to it):

- everything that is not a text decoder layer (the vision tower, the projector, the token
  embeddings, the final norm, the rotary embedding and the LM head) stays on the first GPU, where
  the engine puts its inputs and reads its logits: a decode step then crosses GPUs only inside
  the stack of decoder layers, once at each boundary between two GPUs and once back;
- the decoder layers are cut into contiguous runs, one per GPU, so that the weights are balanced
  by bytes (the first GPU's share counts its vision tower and embeddings).

The engine keeps each layer's KV cache on that layer's GPU (``engine/decoder.py``), so the cache
is split like the layers. A byte balance is the right first cut: the first GPU also holds the
vision tower's activations and the logits, which no weight count shows; measured on H200s: not
yet (docs/deployment.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["LAYERS", "layer_split", "meta_model", "plan_device_map"]

# The text decoder layers of an -hf InternVL model (``InternVLForConditionalGeneration``).
LAYERS = "model.language_model.layers"


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def layer_split(first_bytes: int, layer_bytes: list[int], gpus: int) -> list[int]:
    """The GPU of each layer: contiguous runs, GPU 0 first, that balance the bytes of
    ``first_bytes`` (on GPU 0 whatever happens) plus the layers'. A layer goes to the GPU whose
    share holds the middle of its bytes."""
    if gpus < 1:
        raise ValueError("gpus must be at least 1")
    share = (first_bytes + sum(layer_bytes)) / gpus
    placed, devices = first_bytes, []
    for size in layer_bytes:
        devices.append(min(gpus - 1, int((placed + size / 2) // share)) if share else 0)
        placed += size
    return devices


def plan_device_map(model: nn.Module, gpus: int) -> dict[str, int]:
    """A ``device_map`` for ``model`` (typically built on the meta device, from its config) over
    ``gpus`` GPUs, numbered as the process sees them (0 .. gpus-1)."""
    layers = model.get_submodule(LAYERS)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{LAYERS} is not a list of decoder layers in {type(model).__name__}")
    device_map: dict[str, int] = {}
    first_bytes = 0
    # Every module beside the path down to the layers, and any weight held on that path itself,
    # goes to GPU 0: the map covers every parameter and buffer, as dispatching requires.
    path = LAYERS.split(".")
    parent: nn.Module = model
    prefix = ""
    for step in path:
        for name, tensor in [
            *parent.named_parameters(recurse=False),
            *parent.named_buffers(recurse=False),
        ]:
            device_map[prefix + name] = 0
            first_bytes += tensor.numel() * tensor.element_size()
        for name, child in parent.named_children():
            if name != step:
                device_map[prefix + name] = 0
                first_bytes += _bytes(child)
        parent = parent.get_submodule(step)
        prefix += step + "."
    sizes = [_bytes(layer) for layer in layers]
    for index, device in enumerate(layer_split(first_bytes, sizes, gpus)):
        device_map[f"{LAYERS}.{index}"] = device
    return device_map


def meta_model(model_id: str, dtype: torch.dtype) -> Any:
    """The model of ``model_id``'s config with no weights (the meta device): its module tree and
    parameter sizes, for ``plan_device_map``, in moments and no memory."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_id)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config, dtype=dtype)
