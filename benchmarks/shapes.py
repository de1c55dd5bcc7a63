"""InternVL-shaped checkpoints with random weights, built from a config (no download).

- InternVL3-1B: InternViT-300M (1024 hidden, 24 layers, 16 heads, MLP 4096, 448 px tiles, patch
  14) + Qwen2.5-0.5B (896 hidden, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocabulary 151 674).
- InternVL3.5-8B: the same InternViT-300M + Qwen3-8B (4096 hidden, 36 layers, 32 heads, 8 KV
  heads, head 128, MLP 12 288, vocabulary 151 936, untied LM head).
- InternVL3-78B (``internvl3_78b_config``, for a worker spanning GPUs): InternViT-6B + Qwen2.5-72B.

The tokenizer and chat template come from the tiny checkpoint (its vocabulary is smaller, which
only matters for decoding text; the benchmarks count tokens), the image processor tiles at 448 px
with 256 image tokens per tile, as the real models do.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoProcessor,
    GotOcr2ImageProcessorFast,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVisionConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

from internvl_queue.testing.tiny_model import make_tiny_model

__all__ = [
    "SHAPES",
    "internvl3_78b_config",
    "internvl3_processor",
    "write_internvl3_1b_shaped",
    "write_internvl35_8b_shaped",
    "write_shaped",
]


def internvl3_processor() -> InternVLProcessor:
    """InternVL3's processor shape: 448-px tiles, 256 image tokens per tile; the tiny
    checkpoint's tokenizer and chat template (see the module doc)."""
    with tempfile.TemporaryDirectory() as tiny:
        make_tiny_model(tiny)
        small = AutoProcessor.from_pretrained(tiny)
    return InternVLProcessor(
        image_processor=GotOcr2ImageProcessorFast(
            size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1, max_patches=12
        ),
        tokenizer=small.tokenizer,
        video_processor=small.video_processor,
        image_seq_length=256,
        chat_template=small.chat_template,
    )


def _qwen25_05b() -> PretrainedConfig:
    return Qwen2Config(
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151_674,
        max_position_embeddings=32_768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )


def _qwen3_8b() -> PretrainedConfig:
    return Qwen3Config(
        hidden_size=4096,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=12_288,
        vocab_size=151_936,
        max_position_embeddings=40_960,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )


SHAPES: dict[str, Callable[[], PretrainedConfig]] = {"1b": _qwen25_05b, "8b": _qwen3_8b}


def write_internvl3_1b_shaped(directory: Path, *, seed: int = 0) -> Path:
    return write_shaped("1b", directory, seed=seed)


def write_internvl35_8b_shaped(directory: Path, *, seed: int = 0) -> Path:
    return write_shaped("8b", directory, seed=seed)


def write_shaped(shape: str, directory: Path, *, seed: int = 0) -> Path:
    """Build the ``shape`` checkpoint (a key of ``SHAPES``) into ``directory``, in bf16.

    The weights are made in bf16 on the GPU where there is one (8B in fp32 on the CPU would take
    32 GB and minutes to initialise)."""
    processor = internvl3_processor()
    text_config = SHAPES[shape]()
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(attention_bias=True),  # InternViT-300M defaults
        text_config=text_config,
        image_token_id=processor.image_token_id,
        image_seq_length=256,
        downsample_ratio=0.5,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = InternVLForConditionalGeneration(config).to(torch.bfloat16)
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def internvl3_78b_config(image_token_id: int) -> InternVLConfig:
    """InternVL3-78B's shape (78.4 B parameters, about 157 GB in bf16: larger than one GPU):
    InternViT-6B (3 200 hidden, 45 layers, 25 heads, MLP 12 800, RMS norm, QK norm) + Qwen2.5-72B
    (8 192 hidden, 80 layers, 64 heads, 8 KV heads, MLP 29 568, vocabulary 151 674, untied head).
    For a worker spanning GPUs (docs/deployment.md); build it on the meta device to plan, or
    directly on the GPUs with a device map to measure."""
    return InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=3200,
            num_hidden_layers=45,
            num_attention_heads=25,
            intermediate_size=12800,
            use_qk_norm=True,
            norm_type="rms_norm",
        ),
        text_config=Qwen2Config(
            hidden_size=8192,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            intermediate_size=29_568,
            vocab_size=151_674,
            max_position_embeddings=32_768,
            rope_theta=1_000_000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
        image_token_id=image_token_id,
        image_seq_length=256,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
