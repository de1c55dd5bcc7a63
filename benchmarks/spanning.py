"""A worker spanning GPUs, on InternVL3-78B's shape: our engine against transformers' ``generate``
with the same device map, in one run.

    python -m benchmarks.spanning --gpus 2          # a 2-GPU machine; then --gpus 4 on a 4-GPU one
    python -m benchmarks.spanning --tiny --device cpu --jobs 8 --batches 1,4 --no-append  # smoke

Random weights built from the config directly on the GPUs (no checkpoint): the modules are made on
the meta device, each put on its GPU by the worker's own plan (``worker/device_map.py``) and filled
with random values there, then accelerate's hooks are attached as
``from_pretrained(device_map=...)`` attaches them. Jobs are W1 (448x448, 1 tile) with exactly 64
new tokens (eos ignored). Measured: our engine's burst (jobs/s, mean batch), one idle job's
latency through the engine, and ``generate``'s jobs/s at each batch size on the same model.
Appends a table to RESULTS.md. Not yet run on GPUs (no multi-GPU machine was lent when it was
written): the CPU smoke run above is all it has done.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import InternVLForConditionalGeneration

from benchmarks.engine_bench import (
    NEW_TOKENS,
    QUESTION,
    RESULTS,
    W1,
    Submitter,
    decode,
    images_for,
    sync,
)
from benchmarks.shapes import internvl3_78b_config, internvl3_processor
from internvl_queue.worker.device_map import plan_device_map
from internvl_queue.worker.engine import Engine, EngineConfig, Preprocessor
from internvl_queue.worker.model import LoadedModel, build_inputs

# Compute per W1 job on the 78B shape (issue 24): ~63 TFLOP.
TFLOP_PER_JOB = 63.0


@torch.no_grad()
def _fill(module: nn.Module) -> None:
    """Random weights that keep activations finite: norms 1, biases 0, the rest N(0, 0.02)."""
    for name, parameter in module.named_parameters():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if "norm" in type(owner).__name__.lower():
            parameter.fill_(1.0 if leaf == "weight" else 0.0)
        elif leaf == "bias":
            parameter.zero_()
        else:
            parameter.normal_(0.0, 0.02)


def build(config: Any, devices: list[torch.device], dtype: torch.dtype) -> Any:
    """The model of ``config`` with random weights, split over ``devices`` by the worker's plan."""
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config).to(dtype)
    plan = plan_device_map(model, len(devices))
    for name, index in plan.items():
        part = model.get_submodule(name)
        part.to_empty(device=devices[index])
        _fill(part)
    # Buffers are not weights: the rotary embedding's frequencies are computed again, in place.
    text = model.model.language_model
    text.rotary_emb = type(text.rotary_emb)(config=config.text_config).to(devices[0])
    if len(devices) > 1:
        import accelerate

        accelerate.dispatch_model(
            model,
            device_map={name: devices[index] for name, index in plan.items()},
            skip_keys=model._skip_keys_device_placement,
        )
    return model.eval()


def generate_jobs_s(loaded: LoadedModel, batch: int) -> float:
    """transformers' ``generate`` on ``batch`` W1 jobs at once (left-padded), jobs/s."""
    processor = loaded.processor
    parts = [
        build_inputs(processor, [decode(data)], QUESTION, max_tiles=W1.max_tiles)
        for data in images_for(W1, batch)
    ]
    longest = max(int(p["input_ids"].shape[1]) for p in parts)
    pad = int(loaded.model.generation_config.pad_token_id or 0)
    ids = torch.full((batch, longest), pad, dtype=torch.long)
    mask = torch.zeros((batch, longest), dtype=torch.long)
    for row, p in enumerate(parts):
        length = int(p["input_ids"].shape[1])
        ids[row, longest - length :] = p["input_ids"][0]
        mask[row, longest - length :] = 1
    pixels = torch.cat([p["pixel_values"] for p in parts]).to(loaded.device, loaded.dtype)
    sync_all(loaded)
    started = time.perf_counter()
    with torch.inference_mode():
        loaded.model.generate(
            input_ids=ids.to(loaded.device),
            attention_mask=mask.to(loaded.device),
            pixel_values=pixels,
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
        )
    sync_all(loaded)
    return batch / (time.perf_counter() - started)


def sync_all(loaded: LoadedModel) -> None:
    if loaded.device.type == "cuda":
        for device in loaded.devices:
            torch.cuda.synchronize(device)
    else:
        sync()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, default=2, help="GPUs the model spans")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="the tiny model (a smoke run)")
    parser.add_argument("--jobs", type=int, default=256, help="jobs in the engine's burst")
    parser.add_argument("--threads", type=int, default=64, help="submitting threads")
    parser.add_argument("--idle-repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,64,128", help="generate's batch sizes")
    parser.add_argument("--max-batch-jobs", type=int, default=128)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()

    processor = internvl3_processor()
    if args.tiny:
        from transformers import AutoConfig

        from internvl_queue.testing.tiny_model import make_tiny_model

        tiny = make_tiny_model(Path(tempfile.mkdtemp(prefix="internvl-span-")) / "tiny")
        config = AutoConfig.from_pretrained(tiny)
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(tiny)
    else:
        config = internvl3_78b_config(processor.image_token_id)
    on_gpu = args.device == "cuda"
    devices = (
        [torch.device("cuda", i) for i in range(args.gpus)] if on_gpu else [torch.device("cpu")]
    )
    dtype = torch.bfloat16 if on_gpu else torch.float32
    torch.manual_seed(0)
    sync()
    started = time.perf_counter()
    model = build(config, devices, dtype)
    model.generation_config.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    loaded = LoadedModel("78b-shape", model, processor, devices[0], dtype, tuple(devices))
    sync_all(loaded)
    build_s = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    names = loaded.gpu_names or ["cpu"]
    print(
        f"built {parameters / 1e9:.1f} B parameters on {len(devices)} x {names[0]} in "
        f"{build_s:.1f} s",
        flush=True,
    )

    engine = Engine(loaded, EngineConfig(max_batch_jobs=args.max_batch_jobs, max_wait_ms=20))
    engine.start()
    preprocessor = Preprocessor("78b-shape", processor, dtype, processes=0, max_pixels=10**8)
    submitter = Submitter(loaded, engine, args.threads, preprocessor)
    submitter.burst(W1, min(args.jobs, 16))  # warm-up: lazy initialisation, allocator
    burst = submitter.burst(W1, args.jobs)
    print("engine burst", burst, flush=True)
    idle = submitter.single(W1, args.idle_repeats)
    print("engine idle job", idle, flush=True)
    engine.stop()

    peer = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        try:
            peer[batch] = generate_jobs_s(loaded, batch)
        except torch.OutOfMemoryError:
            peer[batch] = float("nan")
            torch.cuda.empty_cache()
        print(f"generate batch {batch}: {peer[batch]:.2f} jobs/s", flush=True)

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    shape = "tiny model" if args.tiny else "InternVL3-78B shape"
    rows = [
        f"## A worker spanning GPUs: {shape}, {len(devices)} x {names[0]}, {when}",
        "",
        f"`python -m benchmarks.spanning --gpus {args.gpus}`: {parameters / 1e9:.1f} B parameters, "
        f"random weights built on the devices in {build_s:.1f} s, split by worker/device_map.py "
        f"(accelerate's hooks); W1 jobs (1 tile), {NEW_TOKENS} new tokens; no CUDA graphs.",
        "",
        "| path | jobs/s | note |",
        "|---|---|---|",
        f"| our engine, burst of {args.jobs} | {burst['jobs_s']:.2f} | mean batch "
        f"{burst['mean_batch']:.0f} |",
        f"| our engine, one idle job | {1000 / idle['p50_ms']:.3f} | {idle['p50_ms'] / 1000:.2f} s "
        "(median) |",
        *(f"| `generate`, batch {b} | {v:.2f} | same device map |" for b, v in peer.items()),
        "",
        f"Targets (2 GPUs): >= 10 jobs/s, one idle job <= 3 s. Compute roofline: "
        f"~{TFLOP_PER_JOB:.0f} TFLOP a job.",
        "",
    ]
    table = "\n".join(rows)
    print(table)
    if not args.no_append:
        with RESULTS.open("a") as out:
            out.write("\n" + table)


if __name__ == "__main__":
    main()
