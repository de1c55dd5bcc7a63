"""The model seam: the only module that imports torch and transformers.

``load_model`` builds the warm model once per worker process; ``answer`` runs one job on it.
Both take plain values, so tests can call them without Celery or Redis.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from ..core.errors import GpuOutOfMemory, InferenceError

__all__ = ["Answer", "LoadedModel", "answer", "build_inputs", "load_model", "resolve_device"]

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


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    image_tiles: int
    preprocess_ms: float
    inference_ms: float


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
    processor = AutoProcessor.from_pretrained(model_id)
    model: Any = AutoModelForImageTextToText.from_pretrained(
        model_id, dtype=dtype, attn_implementation="sdpa"
    )
    model.to(device).eval()
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


def answer(
    loaded: LoadedModel,
    images: list[Image.Image],
    question: str,
    *,
    max_new_tokens: int,
    max_tiles: int,
) -> Answer:
    """Answer one question about ``images`` greedily; model errors become ``JobFailure``s."""
    try:
        started = time.perf_counter()
        inputs = build_inputs(loaded.processor, images, question, max_tiles=max_tiles)
        prepared = time.perf_counter()
        inputs = inputs.to(loaded.device, dtype=loaded.dtype)
        prompt_len = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            output = loaded.model.generate(
                **inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens
            )
        if loaded.device.type == "cuda":
            torch.cuda.synchronize(loaded.device)
        finished = time.perf_counter()
    except torch.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        raise GpuOutOfMemory(f"the job does not fit in GPU memory: {exc}") from None
    except Exception as exc:
        log.exception("model error")
        raise InferenceError(f"the model failed on this job: {type(exc).__name__}: {exc}") from None
    new_tokens = output[0, prompt_len:]
    text = loaded.processor.decode(new_tokens, skip_special_tokens=True).strip()
    return Answer(
        text=text,
        prompt_tokens=int(prompt_len),
        completion_tokens=int(new_tokens.shape[0]),
        image_tiles=int(inputs["pixel_values"].shape[0]),
        preprocess_ms=(prepared - started) * 1000,
        inference_ms=(finished - prepared) * 1000,
    )
