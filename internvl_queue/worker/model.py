"""The model seam: loading the checkpoint, and the prompt format.

``load_model`` builds the warm model once per worker process with transformers' native classes;
``build_inputs`` is the one place the prompt is made. The batching engine (``engine/``) runs it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import logging as hf_logging

__all__ = ["LoadedModel", "build_inputs", "load_model", "resolve_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def gpu_name(self) -> str | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.get_device_name(self.device)


def resolve_device(preference: str) -> torch.device:
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("INTERNVL_DEVICE=cuda but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def load_model(model_id: str, device_preference: str = "auto") -> LoadedModel:
    """Load an -hf InternVL checkpoint (hub id or directory) with transformers' native classes."""
    device = resolve_device(device_preference)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    hf_logging.disable_progress_bar()  # a progress bar is noise in a service's log
    processor = AutoProcessor.from_pretrained(model_id)
    model: Any = AutoModelForImageTextToText.from_pretrained(
        model_id, dtype=dtype, attn_implementation="sdpa"
    )
    model.to(device).eval()
    if device.type == "cuda":
        # TF32 for the float32 parts (rotary embedding, logits); bf16 matmuls are unaffected.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log.info(
        "loaded %s on %s (%s) in %.1f s",
        model_id,
        device,
        dtype,
        time.perf_counter() - started,
    )
    return LoadedModel(model_id, model, processor, device, dtype)


def build_inputs(
    processor: Any, images: list[Image.Image], question: str, *, max_tiles: int
) -> Any:
    """The prompt: the chat template over one user turn of the images (in order), then the text."""
    content: list[dict[str, str]] = [{"type": "image"} for _ in images]
    content.append({"type": "text", "text": question})
    conversation = [{"role": "user", "content": content}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return processor(images=images, text=prompt, max_patches=max_tiles, return_tensors="pt")
