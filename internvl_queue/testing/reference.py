"""The reference answer: transformers' own processor + ``model.generate``, one job alone, greedy,
on the CPU in fp32; written out here independently of ``internvl_queue.worker``, so that a mistake
there cannot hide itself. The tests compare the service's answers with it, and so does the
compose test, inside the worker container:

    python -m internvl_queue.testing.reference --model DIR --question Q [--max-new-tokens N]
        [--max-tiles N] IMAGE...        (IMAGE may be - for standard input)

prints the answer, alone on one line.
"""

from __future__ import annotations

import argparse
import functools
import io
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

__all__ = ["main", "reference_answer", "reference_tokens"]


@functools.cache
def _load(model_dir: str) -> tuple[Any, Any]:
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    return processor, model


def reference_tokens(
    model_dir: Path, images: list[bytes], question: str, *, max_new_tokens: int, max_tiles: int
) -> tuple[list[int], int]:
    """(new token ids, number of tiles) for one job alone, greedy, on the CPU in fp32.

    One sequence alone stops at its eos, so the new tokens carry no padding.
    """
    processor, model = _load(str(model_dir))
    pictures = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    content: list[dict[str, str]] = [{"type": "image"}] * len(pictures)
    conversation = [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=pictures, text=prompt, max_patches=max_tiles, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    new: list[int] = output[0, inputs["input_ids"].shape[1] :].tolist()
    return new, int(inputs["pixel_values"].shape[0])


def reference_answer(
    model_dir: Path, images: list[bytes], question: str, *, max_new_tokens: int, max_tiles: int
) -> tuple[str, int]:
    """(answer, number of tiles) for one job, as the service should return it."""
    tokens, tiles = reference_tokens(
        model_dir, images, question, max_new_tokens=max_new_tokens, max_tiles=max_tiles
    )
    processor, _ = _load(str(model_dir))
    return processor.decode(tokens, skip_special_tokens=True).strip(), tiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m internvl_queue.testing.reference",
        description="Print the reference answer (transformers' generate, fp32, CPU) for one job.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files; - for stdin")
    parser.add_argument("--model", required=True, help="a local checkpoint directory")
    parser.add_argument("--question", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--max-tiles", type=int, default=12)
    args = parser.parse_args(argv)
    images = [sys.stdin.buffer.read() if p == "-" else Path(p).read_bytes() for p in args.images]
    answer, _ = reference_answer(
        Path(args.model),
        images,
        args.question,
        max_new_tokens=args.max_new_tokens,
        max_tiles=args.max_tiles,
    )
    print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
