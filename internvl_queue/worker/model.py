"""The model seam: loading the checkpoint, and the prompt format.

``load_model`` builds the warm model once per worker process with transformers' native classes,
on one device or, for a model larger than one GPU, across several (``device_map.py``);
``build_inputs`` is the one place the prompt is made. The batching engine (``engine/``) runs it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import logging as hf_logging

__all__ = [
    "LoadedModel",
    "build_inputs",
    "load_model",
    "model_dtype",
    "question_tokens",
    "resolve_device",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    model: Any
    processor: Any
    # Where inputs go and logits come back: the vision tower, embeddings and LM head are here.
    device: torch.device
    dtype: torch.dtype
    # Every device holding part of the model, ``device`` first: more than one when the worker
    # spans GPUs (INTERNVL_GPUS_PER_WORKER), its decoder layers split between them.
    devices: tuple[torch.device, ...] = ()

    def __post_init__(self) -> None:
        if not self.devices:
            object.__setattr__(self, "devices", (self.device,))

    @property
    def sharded(self) -> bool:
        return len(self.devices) > 1

    @property
    def gpu_name(self) -> str | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.get_device_name(self.device)

    @property
    def gpu_names(self) -> list[str] | None:
        """The name of each GPU the model is on, in device order; None off CUDA."""
        if self.device.type != "cuda":
            return None
        return [torch.cuda.get_device_name(d) for d in self.devices]


def resolve_device(preference: str) -> torch.device:
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("INTERNVL_DEVICE=cuda but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def model_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs; fp32 on the CPU (where bf16 matmuls are slow or missing)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_model(model_id: str, device_preference: str = "auto", *, gpus: int = 1) -> LoadedModel:
    """Load an -hf InternVL checkpoint (hub id or directory) with transformers' native classes,
    across the first ``gpus`` visible GPUs when more than one (``device_map.py``)."""
    device = resolve_device(device_preference)
    dtype = model_dtype(device)
    started = time.perf_counter()
    hf_logging.disable_progress_bar()  # a progress bar is noise in a service's log
    processor = AutoProcessor.from_pretrained(model_id)
    devices: tuple[torch.device, ...] = (device,)
    model: Any
    if gpus > 1 and device.type != "cuda":
        log.warning(
            "INTERNVL_GPUS_PER_WORKER=%d has no effect on the %s: the model is loaded whole there",
            gpus,
            device,
        )
    if gpus > 1 and device.type == "cuda":
        model, devices = _load_across_gpus(model_id, dtype, gpus)
    else:
        model = AutoModelForImageTextToText.from_pretrained(
            model_id, dtype=dtype, attn_implementation="sdpa"
        )
        model.to(device)
    model.eval()
    if device.type == "cuda":
        # TF32 for the float32 parts (rotary embedding, logits); bf16 matmuls are unaffected.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log.info(
        "loaded %s on %s (%s) in %.1f s",
        model_id,
        ", ".join(str(d) for d in devices),
        dtype,
        time.perf_counter() - started,
    )
    return LoadedModel(model_id, model, processor, devices[0], dtype, devices)


def _load_across_gpus(
    model_id: str, dtype: torch.dtype, gpus: int
) -> tuple[Any, tuple[torch.device, ...]]:
    """The model split over cuda:0 .. cuda:gpus-1 by ``device_map.plan_device_map``: transformers
    puts each module's weights on its GPU as it reads them (never the whole model in host
    memory), and accelerate's hooks move each module's inputs to its GPU."""
    from .device_map import LAYERS, meta_model, plan_device_map
    from .model_source import ModelUnavailable

    visible = torch.cuda.device_count()
    if visible < gpus:
        raise ModelUnavailable(
            f"INTERNVL_GPUS_PER_WORKER={gpus} but this worker sees {visible} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): give it "
            f"{gpus} GPUs, or lower INTERNVL_GPUS_PER_WORKER"
        )
    if importlib.util.find_spec("accelerate") is None:
        raise ModelUnavailable(
            f"INTERNVL_GPUS_PER_WORKER={gpus} needs the accelerate package (transformers "
            "places a model across GPUs with it): install internvl-queue[worker]"
        )
    device_map = plan_device_map(meta_model(model_id, dtype), gpus)
    model = AutoModelForImageTextToText.from_pretrained(
        model_id, dtype=dtype, attn_implementation="sdpa", device_map=device_map
    )
    counts = Counter(v for k, v in device_map.items() if k.startswith(f"{LAYERS}."))
    log.info(
        "the model spans %d GPUs: vision tower, embeddings and LM head on cuda:0; decoder layers "
        "per GPU %s",
        gpus,
        ", ".join(f"cuda:{d}: {counts[d]}" for d in range(gpus)),
    )
    return model, tuple(torch.device("cuda", d) for d in range(gpus))


def build_inputs(
    processor: Any, images: list[Image.Image], question: str, *, max_tiles: int
) -> Any:
    """The prompt: the chat template over one user turn of the images (in order), then the text.

    The question is the caller's text, never markup: a ``<IMG_CONTEXT>`` or ``<|im_start|>`` in it
    is tokenized as the characters it is made of, so that it can neither add image slots nor open
    a chat turn. The template's own markers stay special. The tokenizer cuts text at its special
    tokens and tokenizes each piece alone, so the prompt is tokenized in three parts that meet at
    markers (up to the last marker before the question; the text piece holding the question, with
    specials split; the rest): for an ordinary question the ids equal those of the whole prompt.
    """
    sentinel = f"\ue000{uuid.uuid4().hex}\ue000"  # stands in for the question in the template
    content: list[dict[str, str]] = [{"type": "image"} for _ in images]
    content.append({"type": "text", "text": sentinel})
    conversation = [{"role": "user", "content": content}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    before, after = prompt.split(sentinel)
    tokenizer = processor.tokenizer
    markers = list(tokenizer.added_tokens_encoder)
    cut = max((before.rfind(m) + len(m) for m in markers if m in before), default=0)
    end = min((after.find(m) for m in markers if m in after), default=len(after))
    inputs = processor(
        images=images or None, text=before[:cut], max_patches=max_tiles, return_tensors="pt"
    )
    text = tokenizer(
        before[cut:] + question + after[:end], add_special_tokens=False, split_special_tokens=True
    ).input_ids
    rest = tokenizer(after[end:], add_special_tokens=False).input_ids
    ids = torch.cat([inputs["input_ids"][0], torch.tensor(text + rest, dtype=torch.long)])
    inputs["input_ids"] = ids[None]
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    return inputs


def question_tokens(processor: Any, question: str) -> int:
    """How many tokens the question is on its own (as text: specials split)."""
    ids = processor.tokenizer(question, add_special_tokens=False, split_special_tokens=True)
    return len(ids.input_ids)
