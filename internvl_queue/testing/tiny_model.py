"""Build a tiny, random InternVL checkpoint for tests and the offline demo.

The real `OpenGVLab/InternVL3-1B-hf` weighs gigabytes and lives on the model hub. The worker only
talks to a checkpoint through `AutoProcessor` / `AutoModelForImageTextToText`, so a checkpoint
with the same classes, tokenizer special tokens, chat template and tiling image processor, but a
few hundred kilobytes of random weights, lets the whole pipeline run offline in seconds. Its
answers are gibberish, yet deterministic for a given seed and dependent on both the image and
the question, which is what tests and the demo need to tell requests apart.

`InternVLProcessor` always owns an `InternVLVideoProcessor`, and transformers only provides video
processors when torchvision is installed; so building (and loading) the processor needs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVisionConfig,
    Qwen2Config,
    Qwen2Tokenizer,
)
from transformers.utils import is_torchvision_available
from transformers.utils import logging as hf_logging

__all__ = ["IMAGE_SEQ_LENGTH", "MAX_TILES", "make_tiny_model"]

# The special tokens of the Qwen2.5-based InternVL3 tokenizers.
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
START_IMAGE_TOKEN = "<img>"
END_IMAGE_TOKEN = "</img>"
CONTEXT_IMAGE_TOKEN = "<IMG_CONTEXT>"
VIDEO_TOKEN = "<video>"
SPECIAL_TOKENS = (
    PAD_TOKEN,
    IM_START,
    IM_END,
    START_IMAGE_TOKEN,
    END_IMAGE_TOKEN,
    CONTEXT_IMAGE_TOKEN,
    VIDEO_TOKEN,
)

# The chat template of the InternVL3 "-hf" checkpoints. An image item becomes one
# `<IMG_CONTEXT>` placeholder (the processor's `image_token`), which `InternVLProcessor` expands
# to `<img>` + `<IMG_CONTEXT>` * image_seq_length * tiles + `</img>`.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\n' }}"
    "{% endif %}"
)

# Qwen2's pre-tokenizer split, so the trained merges look like Qwen2's (words, single digits).
_QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Varied English so that the BPE trainer finds a few hundred merges.
_CORPUS = (
    "What is in this image? Describe the picture in detail.",
    "What colour is the object? The object is red, green, blue, yellow, white or black.",
    "How many people are there in the photo? There are two people and a dog.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A cat is sitting on a wooden table next to a cup of coffee.",
    "Is there any text in the image? Read the text and answer the question.",
    "The sky is clear and the sun is shining over the snowy mountains.",
    "A man rides a bicycle down a busy street in the city at night.",
    "Please answer the question with a single word or a short phrase.",
    "This chart shows sales by month; the highest value is in June.",
    "Where was this photo taken? It looks like a beach with white sand.",
    "Count the apples on the plate: one, two, three, four, five, six.",
    "Hello! Hi, how can I help you today? Thank you, goodbye.",
    "system user assistant: the user asks and the assistant answers.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and symbols , . ; : ! ? ( ) - ' \" / %",
)

BPE_VOCAB_SIZE = 384  # 256 byte symbols + 7 special tokens + ~120 merges
VISION_IMAGE_SIZE = 32  # tile side in pixels (448 in the real model)
VISION_PATCH_SIZE = 4  # 8x8 patches per tile
DOWNSAMPLE_RATIO = 0.5  # pixel shuffle: 8x8 patches -> 4x4
# = (image_size // patch_size) ** 2 * downsample_ratio ** 2, as InternVLProcessor documents.
IMAGE_SEQ_LENGTH = int((VISION_IMAGE_SIZE // VISION_PATCH_SIZE) ** 2 * DOWNSAMPLE_RATIO**2)
MAX_TILES = 12
# ImageNet statistics, as in the real InternVL image processor config.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
# Much larger than the usual 0.02: a near-zero random network emits the same token whatever the
# input, while this makes the greedy answer depend on the image and the question.
INIT_STD = 0.5


def _corpus_lines() -> Iterator[str]:
    # Varying repetition spreads the pair counts; training is deterministic for a fixed input.
    for repeat in range(1, 4):
        for line in _CORPUS:
            yield from [line] * repeat
            yield line.lower()


def _build_tokenizer() -> Qwen2Tokenizer:
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus_lines(), trainer=trainer)
    trained = json.loads(backend.to_str())["model"]
    # tokenizers' BPE wants (left, right) pairs; Qwen2Tokenizer's `list[str]` hint is too narrow.
    merges = cast("list[str]", [tuple(merge) for merge in trained["merges"]])

    # Qwen2Tokenizer rebuilds the Qwen2 pipeline around our vocab and merges, so the saved
    # tokenizer_config names the same class as the real checkpoint.
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=merges,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        # Named multimodal tokens become attributes (`tokenizer.context_image_token`,
        # `tokenizer.context_image_token_id`, ...), which is what InternVLProcessor reads.
        extra_special_tokens={
            "start_image_token": START_IMAGE_TOKEN,
            "end_image_token": END_IMAGE_TOKEN,
            "context_image_token": CONTEXT_IMAGE_TOKEN,
            "video_token": VIDEO_TOKEN,
        },
        # Batched generation with a decoder-only model needs left padding; InternVLProcessor
        # defaults to it too, but a tokenizer-level setting would override that default.
        padding_side="left",
        model_max_length=4096,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    # Qwen2Tokenizer only registers *named* special tokens as added tokens; without this,
    # "<|im_start|>" in a prompt would be split into bytes and not skipped when decoding.
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [IM_START]}, replace_extra_special_tokens=False
    )
    return tokenizer


def _build_config(tokenizer: Qwen2Tokenizer) -> InternVLConfig:
    text_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    vision_config = InternVLVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=VISION_IMAGE_SIZE,
        patch_size=VISION_PATCH_SIZE,
    )
    return InternVLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=IMAGE_SEQ_LENGTH,
        downsample_ratio=DOWNSAMPLE_RATIO,
        tie_word_embeddings=True,
    )


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> None:
    # A private generator makes the weights a function of `seed` alone, not of global RNG state.
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "norm" in name or "lambda_" in name:
            continue  # unit norms and the layer scales keep activations finite
        param.copy_(torch.randn(param.shape, generator=generator) * INIT_STD)


def _unprintable_token_ids(tokenizer: Qwen2Tokenizer) -> list[int]:
    """Ids of every token but `<|im_end|>` that would not add visible ASCII text to an answer."""
    special_ids = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
    ids = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        readable = isinstance(text, str) and text.isascii() and text.isprintable() and text.strip()
        if token_id in special_ids or not readable:
            ids.append(token_id)
    return ids


def _build_model(
    config: InternVLConfig, tokenizer: Qwen2Tokenizer, seed: int
) -> InternVLForConditionalGeneration:
    model = InternVLForConditionalGeneration(config).eval()
    _randomize(model, seed)
    model.generation_config = GenerationConfig(
        # Qwen2-chat style: stop at <|im_end|>, pad with <|endoftext|>.
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Random weights would happily emit control bytes, half UTF-8 sequences or image tokens;
        # banning those keeps answers readable, and with at least one token they are non-empty.
        suppress_tokens=_unprintable_token_ids(tokenizer),
        min_new_tokens=1,
    )
    return model


def _build_processor(tokenizer: Qwen2Tokenizer) -> InternVLProcessor:
    # Imported here: without torchvision these names are placeholders that raise when used.
    from transformers import GotOcr2ImageProcessor, InternVLVideoProcessor

    image_processor = GotOcr2ImageProcessor(
        size={"height": VISION_IMAGE_SIZE, "width": VISION_IMAGE_SIZE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=MAX_TILES,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )
    video_processor = InternVLVideoProcessor(
        size={"height": VISION_IMAGE_SIZE, "width": VISION_IMAGE_SIZE},
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )
    return InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        image_seq_length=IMAGE_SEQ_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )


def make_tiny_model(directory: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random InternVL checkpoint (model + processor) to `directory`.

    Offline, seeded and deterministic: the same `seed` writes byte-identical weights and
    tokenizer files. Returns `directory` as a `Path`, ready for `from_pretrained`.
    """
    if not is_torchvision_available():
        # Checked first so that a failure leaves no half-written checkpoint behind.
        raise ImportError(
            "make_tiny_model needs torchvision: InternVLProcessor owns an InternVLVideoProcessor,"
            " which transformers only provides with torchvision installed"
        )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer()
    processor = _build_processor(tokenizer)
    model = _build_model(_build_config(tokenizer), tokenizer, seed)

    # The shard-writing progress bar is noise in test logs; restore the caller's setting after.
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()
    processor.save_pretrained(out)
    return out
