"""Engine benchmark: the per-request baseline and the batching engine, measured in one run.

    python -m benchmarks.engine_bench                      # on a GPU: InternVL3-1B shape, bf16
    python -m benchmarks.engine_bench --model DIR --device cpu --jobs 16   # a quick CPU smoke run

Workloads (real JPEGs made here): W1 = 448x448 (1 tile); W7 = 896x672 with max_tiles=6 (6 tiles +
thumbnail = 7); question of about 16 tokens; exactly 64 new tokens (eos ignored); Wmix = W1 with
max_new_tokens uniform in 16..256. Prints a table and appends it, with the device and date, to
benchmarks/RESULTS.md (and writes the figures as JSON for the whole-path benchmark).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from internvl_queue.worker.engine import (
    Engine,
    EngineConfig,
    EngineRequest,
    Preprocessor,
    default_processes,
    make_request,
)
from internvl_queue.worker.model import LoadedModel, build_inputs, load_model

QUESTION = "Describe this picture in one short sentence, naming the main object and its colour."
NEW_TOKENS = 64
# Compute rooflines (ANCHORS.md, issue 25): 1B shape ~0.91 TFLOP per W1 job, ~7 TFLOP per W7 job;
# 8B shape ~7 TFLOP per W1 job (≈ 125 jobs/s on an H100 / H200).
ROOFLINE_JOBS_S = {"1b": {"W1": 880.0, "W7": 125.0}, "8b": {"W1": 125.0}}
RESULTS = Path(__file__).parent / "RESULTS.md"


@dataclass(frozen=True)
class Workload:
    name: str
    width: int
    height: int
    max_tiles: int


W1 = Workload("W1", 448, 448, 12)
W7 = Workload("W7", 896, 672, 6)


def jpeg(width: int, height: int, seed: int) -> bytes:
    rng = random.Random(seed)
    small = Image.new("RGB", (16, 12))
    small.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(16 * 12)])
    buffer = io.BytesIO()
    small.resize((width, height), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def images_for(workload: Workload, count: int = 32) -> list[bytes]:
    return [jpeg(workload.width, workload.height, seed) for seed in range(count)]


class CaptureCounter(logging.Handler):
    """Counts the decoder's "captured decode graph" log lines: works for any version of the
    decoder (a baseline's too), whatever the level it logs them at."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("captured decode graph"):
            self.count += 1

    def install(self) -> CaptureCounter:
        decoder_log = logging.getLogger("internvl_queue.worker.engine.decoder")
        decoder_log.setLevel(logging.DEBUG)
        decoder_log.addHandler(self)
        return self


CAPTURES = CaptureCounter().install()


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


# -- the per-request baseline: processor + one generate per job ---------------------------------
def baseline(loaded: LoadedModel, workload: Workload, jobs: int) -> dict[str, float]:
    images = images_for(workload, jobs)
    sync()
    started = time.perf_counter()
    tiles = 0
    for data in images:
        inputs = build_inputs(
            loaded.processor, [decode(data)], QUESTION, max_tiles=workload.max_tiles
        )
        tiles = int(inputs["pixel_values"].shape[0])
        inputs = inputs.to(loaded.device, dtype=loaded.dtype)
        with torch.inference_mode():
            loaded.model.generate(
                **inputs, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS
            )
        sync()
    elapsed = time.perf_counter() - started
    return {"jobs_s": jobs / elapsed, "s_per_job": elapsed / jobs, "tiles": tiles}


def peer(
    loaded: LoadedModel, workload: Workload, batch_sizes: list[int], jobs: int
) -> dict[str, Any]:
    """transformers' own static batched ``generate``, the peer of issue 25: batches of equal
    prompts (one workload's jobs all have the same length, so no padding), bf16, exactly
    ``NEW_TOKENS`` new tokens. Its inputs are prepared and on the GPU before the clock starts
    (the engine's bursts include preprocessing), so the comparison favours the peer."""
    one = [
        build_inputs(loaded.processor, [decode(d)], QUESTION, max_tiles=workload.max_tiles)
        for d in images_for(workload)
    ]
    by_size: dict[str, float] = {}
    for size in batch_sizes:
        picked = [one[i % len(one)] for i in range(size)]
        inputs = {
            key: torch.cat([p[key] for p in picked]).to(loaded.device)
            for key in ("input_ids", "attention_mask", "pixel_values")
        }
        inputs["pixel_values"] = inputs["pixel_values"].to(loaded.dtype)
        batches = max(1, jobs // size)
        with torch.inference_mode():  # one untimed batch: allocations and kernel selection
            loaded.model.generate(**inputs, do_sample=False, max_new_tokens=2)
        sync()
        started = time.perf_counter()
        for _ in range(batches):
            with torch.inference_mode():
                loaded.model.generate(
                    **inputs, do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS
                )
        sync()
        by_size[str(size)] = batches * size / (time.perf_counter() - started)
        print(workload.name, "peer static batch", size, f"{by_size[str(size)]:.1f} jobs/s")
        del inputs
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    best = max(by_size, key=lambda size: by_size[size])
    return {"by_size": by_size, "best_size": int(best), "jobs_s": by_size[best]}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- the engine ---------------------------------------------------------------------------------
class Submitter:
    """Submits jobs from many threads, each preparing its input through the worker's own
    ``Preprocessor`` (a process pool on a GPU), as the worker's task threads do."""

    def __init__(
        self, loaded: LoadedModel, engine: Engine, threads: int, preprocessor: Preprocessor
    ) -> None:
        self.loaded, self.engine, self.preprocessor = loaded, engine, preprocessor
        self.pool = ThreadPoolExecutor(threads)

    def one(
        self, data: bytes, workload: Workload, max_new_tokens: int = NEW_TOKENS
    ) -> EngineRequest:
        prepared = self.preprocessor([data], QUESTION, max_tiles=workload.max_tiles)
        request = make_request(prepared, max_new_tokens=max_new_tokens, ignore_eos=True)
        return self.engine.submit(request)

    def burst(
        self, workload: Workload, jobs: int, lengths: Callable[[int], int] = lambda i: NEW_TOKENS
    ) -> dict[str, float]:
        images = images_for(workload)
        before = self.engine.stats.snapshot()
        captures = CAPTURES.count
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        futures = [
            self.pool.submit(self.one, images[i % len(images)], workload, lengths(i))
            for i in range(jobs)
        ]
        requests = [f.result() for f in futures]
        results = [r.future.result() for r in requests]
        elapsed = time.perf_counter() - started
        after = self.engine.stats.snapshot()
        batches = after["batches"] - before["batches"]
        return {
            "captures": CAPTURES.count - captures,
            "jobs_s": jobs / elapsed,
            "tokens_s": sum(len(r.tokens) for r in results) / elapsed,
            "mean_batch": jobs / max(batches, 1),
            "tiles": requests[0].tiles,
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30
            if torch.cuda.is_available()
            else 0.0,
        }

    def single(self, workload: Workload, repeats: int) -> dict[str, float]:
        """One job at a time on an idle engine: its latency, and where the time goes (the
        preprocessing hop, then the decoder's phases, synchronised, for a second set of
        ``repeats`` jobs so that the synchronisations do not slow the first)."""
        images = images_for(workload, repeats)
        captures = CAPTURES.count
        latencies = []
        for data in images:
            started = time.perf_counter()
            self.one(data, workload).future.result()
            latencies.append(time.perf_counter() - started)
        figures = {
            "p50_ms": statistics.median(latencies) * 1000,
            "captures": CAPTURES.count - captures,
        }
        decoder = self.engine.decoder
        decoder.profile, decoder.profile_log = True, []
        preprocess = []
        try:
            for data in images:
                started = time.perf_counter()
                prepared = self.preprocessor([data], QUESTION, max_tiles=workload.max_tiles)
                preprocess.append(time.perf_counter() - started)
                request = make_request(prepared, max_new_tokens=NEW_TOKENS, ignore_eos=True)
                self.engine.submit(request).future.result()
        finally:
            decoder.profile = False
        figures["preprocess_ms"] = statistics.median(preprocess) * 1000
        for phase in ("vision", "prefill", "decode"):
            figures[f"{phase}_ms"] = statistics.median(p[phase] for _, p in decoder.profile_log)
        return figures

    def steady(self, workload: Workload, rate: float, seconds: float) -> dict[str, float]:
        """Poisson arrivals at ``rate`` jobs/s; latency from arrival to answer."""
        images = images_for(workload)
        captures = CAPTURES.count
        rng = random.Random(1)
        latencies: list[float] = []
        lock = threading.Lock()
        pending = []

        def job(data: bytes, arrived: float) -> None:
            self.one(data, workload).future.result()
            with lock:
                latencies.append(time.perf_counter() - arrived)

        end = time.perf_counter() + seconds
        next_at = time.perf_counter()
        i = 0
        while next_at < end:
            time.sleep(max(0.0, next_at - time.perf_counter()))
            pending.append(self.pool.submit(job, images[i % len(images)], next_at))
            i += 1
            next_at += rng.expovariate(rate)
        for f in pending:
            f.result()
        latencies.sort()
        return {
            "rate": rate,
            "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "captures": CAPTURES.count - captures,
        }


def agreement(loaded: LoadedModel, engine: Engine, submitter: Submitter, jobs: int) -> float:
    """Fraction of jobs whose tokens are identical batched (all at once) and alone."""
    images = images_for(W1, jobs)
    together = [
        f.result().future.result()
        for f in [submitter.pool.submit(submitter.one, d, W1) for d in images]
    ]
    alone = [submitter.one(d, W1).future.result() for d in images]
    same = sum(a.tokens == b.tokens for a, b in zip(together, alone, strict=True))
    return same / jobs


def profile_batch(
    engine: Engine, submitter: Submitter, workload: Workload, jobs: int
) -> dict[str, float]:
    """Phases of the largest batch of a burst (the GPU is synchronised between phases)."""
    engine.decoder.profile, engine.decoder.profile_log = True, []
    try:
        submitter.burst(workload, jobs)
        size, phases = max(engine.decoder.profile_log, key=lambda entry: entry[0])
        return {"batch": size, **phases}
    finally:
        engine.decoder.profile = False


def make_engine(loaded: LoadedModel, **config: Any) -> Engine:
    engine = Engine(loaded, EngineConfig(**config))
    engine.start()
    return engine


def extras(
    figures: dict[str, Any],
    args: argparse.Namespace,
    loaded: LoadedModel,
    engine: Engine,
    submitter: Submitter,
) -> None:
    """Latency under load, bf16 agreement, and grouping by length on a mixed workload."""
    rate = 0.5 * figures["burst_W1"]["jobs_s"]
    figures["steady_W1"] = submitter.steady(W1, rate, args.steady_seconds)
    print("steady", figures["steady_W1"], flush=True)
    figures["agreement_bf16_W1"] = agreement(loaded, engine, submitter, 64)
    print("agreement", figures["agreement_bf16_W1"], flush=True)
    mix_rng = random.Random(7)
    lengths = [mix_rng.randint(16, 256) for _ in range(args.jobs)]
    figures["mix_grouped"] = submitter.burst(W1, args.jobs, lambda i: lengths[i % len(lengths)])
    ungrouped = make_engine(loaded, group_by_length=False)
    submitter.engine = ungrouped
    submitter.burst(W1, 64, lambda i: lengths[i % len(lengths)])
    figures["mix_ungrouped"] = submitter.burst(W1, args.jobs, lambda i: lengths[i % len(lengths)])
    ungrouped.stop()
    submitter.engine = engine
    print("mix", figures["mix_grouped"], figures["mix_ungrouped"], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", help="checkpoint directory (default: build the 1B shape)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=1024)
    parser.add_argument("--baseline-jobs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=256, help="submitting threads")
    parser.add_argument("--processes", type=int, default=-1, help="preprocessing processes")
    parser.add_argument("--steady-seconds", type=float, default=15)
    parser.add_argument("--fp32-agreement", action="store_true")
    parser.add_argument(
        "--no-extras", action="store_true", help="only the baseline, bursts and single-job figures"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep-model", type=Path, help="write the built checkpoint here")
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--workloads", default="W1,W7", help="comma-separated: W1, W7")
    parser.add_argument("--shape", default="1b", choices=["1b", "8b"], help="built when no --model")
    parser.add_argument(
        "--peer",
        default="W1:64/128/256,W7:32/64",
        help="transformers' static batched generate at these batch sizes per workload; '' for none",
    )
    parser.add_argument("--peer-jobs", type=int, default=512, help="jobs per peer batch size")
    args = parser.parse_args()
    workloads = [{"W1": W1, "W7": W7}[name] for name in args.workloads.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="internvl-bench-"))
    model_dir = Path(args.model) if args.model else None
    if model_dir is None:
        from benchmarks.shapes import write_shaped

        model_dir = write_shaped(args.shape, args.keep_model or workdir / f"internvl-{args.shape}")
    started = time.perf_counter()
    loaded = load_model(str(model_dir), args.device)
    load_s = time.perf_counter() - started
    device_name = loaded.gpu_name or "cpu"
    print(f"model {model_dir} on {device_name} ({loaded.dtype})", flush=True)
    figures: dict[str, Any] = {"device": device_name, "dtype": str(loaded.dtype)}
    figures["shape"] = args.shape if not args.model else str(model_dir)
    peer_sizes = dict(part.split(":") for part in args.peer.split(",") if part)

    for w in workloads:
        figures[f"baseline_{w.name}"] = baseline(loaded, w, args.baseline_jobs)
        print(w.name, "baseline", figures[f"baseline_{w.name}"], flush=True)
        if w.name in peer_sizes:
            sizes = [int(size) for size in peer_sizes[w.name].split("/")]
            figures[f"peer_{w.name}"] = peer(loaded, w, sizes, args.peer_jobs)

    processes = default_processes(loaded.device.type) if args.processes < 0 else args.processes
    started = time.perf_counter()
    preprocessor = Preprocessor(
        str(model_dir), loaded.processor, loaded.dtype, processes=processes, max_pixels=10**8
    )
    figures["preprocess_processes"] = processes
    preprocessor_s = time.perf_counter() - started
    sync()
    started, captures = time.perf_counter(), CAPTURES.count
    engine = make_engine(loaded, group_by_length=True)  # prepares the decode shapes
    sync()
    snap = engine.stats.snapshot()
    figures["startup"] = {
        "load_s": load_s,
        "preprocessor_s": preprocessor_s,
        "engine_start_s": time.perf_counter() - started,
        "captures": CAPTURES.count - captures,
        "decode_shapes": snap.get("decode_shapes", 0),
        "decode_workspace_mb": snap.get("decode_workspace_mb", 0),
        "decode_graph_reserved_mb": snap.get("decode_graph_reserved_mb", 0),
    }
    print("start-up", figures["startup"], flush=True)
    submitter = Submitter(loaded, engine, args.threads, preprocessor)
    for w in workloads:  # warm-up: allocations (and, for a decoder that captures lazily, graphs)
        figures[f"warmup_{w.name}"] = submitter.burst(w, min(args.jobs, 256))
        print(w.name, "warm-up", figures[f"warmup_{w.name}"], flush=True)
    for w in workloads:
        figures[f"burst_{w.name}"] = submitter.burst(w, args.jobs)
        print(w.name, "burst", figures[f"burst_{w.name}"], flush=True)
        figures[f"profile_{w.name}"] = profile_batch(engine, submitter, w, min(args.jobs, 256))
        print(w.name, "phases of one batch (ms)", figures[f"profile_{w.name}"], flush=True)
    figures["single_W1"] = submitter.single(W1, 20)
    print("single", figures["single_W1"], flush=True)
    if not args.no_extras:
        extras(figures, args, loaded, engine, submitter)
    figures["uncaptured_batches"] = engine.stats.snapshot().get("uncaptured_batches", 0)
    engine.stop()

    if args.fp32_agreement and loaded.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        fp32 = LoadedModel(
            loaded.model_id, loaded.model.float(), loaded.processor, loaded.device, torch.float32
        )
        engine32 = make_engine(fp32)
        pre32 = Preprocessor(
            str(model_dir), fp32.processor, torch.float32, processes=processes, max_pixels=10**8
        )
        figures["agreement_fp32_W1"] = agreement(
            fp32, engine32, Submitter(fp32, engine32, 64, pre32), 64
        )
        pre32.close()
        engine32.stop()
        print("fp32 agreement", figures["agreement_fp32_W1"], flush=True)

    table = render(figures, args)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if not args.no_append:
        with RESULTS.open("a") as results:
            results.write(table + "\n")


def render(f: dict[str, Any], args: argparse.Namespace) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        f"\n## Engine benchmark, {f['shape']} shape, {f['device']}, {f['dtype']}, {date}\n",
        f"`python -m benchmarks.engine_bench` ({args.jobs} jobs per burst, "
        f"{args.threads} submitting threads, {f['preprocess_processes']} preprocessing processes, "
        f"{NEW_TOKENS} new tokens, eos ignored)\n",
        "| figure | per-request baseline | engine | engine / baseline | fraction of roofline |",
        "|---|---|---|---|---|",
    ]
    for w in [k.removeprefix("peer_") for k in f if k.startswith("peer_")]:
        p, burst = f[f"peer_{w}"], f[f"burst_{w}"]
        sizes = ", ".join(f"b={size}: {jobs_s:.1f}" for size, jobs_s in p["by_size"].items())
        rows.append(
            f"| {w}: transformers' static batched generate, jobs/s ({sizes}) | | engine "
            f"{burst['jobs_s']:.1f} vs the peer's best {p['jobs_s']:.1f} | "
            f"**{burst['jobs_s'] / p['jobs_s']:.2f}x the peer** | |"
        )
    for w in [k.removeprefix("burst_") for k in f if k.startswith("burst_")]:
        base, burst = f[f"baseline_{w}"], f[f"burst_{w}"]
        rows.append(
            f"| {w} burst jobs/s ({burst['tiles']} tiles) | {base['jobs_s']:.2f} | "
            f"{burst['jobs_s']:.1f} (mean batch {burst['mean_batch']:.0f}) | "
            f"{burst['jobs_s'] / base['jobs_s']:.0f}x | "
            f"{_roofline_fraction(f, w, burst['jobs_s'])} |"
        )
    one = f["single_W1"]
    rows.append(
        f"| W1 single job, idle GPU | {f['baseline_W1']['s_per_job'] * 1000:.0f} ms | "
        f"{one['p50_ms']:.0f} ms (p50 of 20); where it goes (medians, GPU synchronised): "
        f"preprocessing {one['preprocess_ms']:.0f}, vision {one['vision_ms']:.0f}, prefill "
        f"{one['prefill_ms']:.0f}, decode {one['decode_ms']:.0f} ms ({NEW_TOKENS} steps) | | |"
    )
    if "steady_W1" in f:
        rows.extend(_extra_rows(f))
    peak = max(f[k]["peak_gpu_gb"] for k in f if k.startswith("burst_"))
    rows.append(f"| peak GPU memory | | {peak:.1f} GiB | | |")
    rows.extend(_startup_rows(f))
    if "agreement_fp32_W1" in f:
        rows.append(
            f"| batched == alone, fp32, TF32 off | | {f['agreement_fp32_W1']:.0%} identical | | |"
        )
    for w in [k.removeprefix("burst_") for k in f if k.startswith("burst_")]:
        profile = dict(f[f"profile_{w}"])
        size = profile.pop("batch")
        phases = ", ".join(f"{k} {v:.0f} ms" for k, v in profile.items())
        rows.append(f"| one {w} batch of {size:.0f} jobs: where the time goes | | {phases} | | |")
    return "\n".join(rows)


def _roofline_fraction(f: dict[str, Any], workload: str, jobs_s: float) -> str:
    roofline = ROOFLINE_JOBS_S.get(f["shape"], {}).get(workload)
    return f"{jobs_s / roofline:.1%}" if roofline else "-"


def _startup_rows(f: dict[str, Any]) -> list[str]:
    s = f["startup"]
    phases = [("start-up", s["captures"])]
    phases += [(k.replace("_", " "), f[k]["captures"]) for k in f if k.startswith("warmup_")]
    phases += [(k.replace("_", " "), f[k]["captures"]) for k in f if k.startswith("burst_")]
    phases += [("single W1", f["single_W1"]["captures"])]
    if "steady_W1" in f:
        phases += [("steady W1", f["steady_W1"]["captures"])]
    return [
        "| start-up: model load; preprocessing pool; engine (decode shapes prepared) | | "
        f"{s['load_s']:.1f} s; {s['preprocessor_s']:.1f} s; "
        f"{s['engine_start_s']:.1f} s ({s['decode_shapes']} shapes, KV and buffers "
        f"{s['decode_workspace_mb']} MiB, {s['decode_graph_reserved_mb']} MiB reserved "
        "with the graphs) | | |",
        "| decode CUDA graph captures per phase | | "
        + ", ".join(f"{name} {count}" for name, count in phases)
        + f"; batches decoded without a graph: {f['uncaptured_batches']} | | |",
    ]


def _extra_rows(f: dict[str, Any]) -> list[str]:
    rows = []
    s = f["steady_W1"]
    rows.append(
        f"| W1 latency at {s['rate']:.0f} jobs/s offered (half the burst rate) | | "
        f"p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms | | |"
    )
    g, u = f["mix_grouped"], f["mix_ungrouped"]
    rows.append(
        f"| Wmix burst jobs/s (max_new_tokens 16..256) | | grouped by length {g['jobs_s']:.1f}, "
        f"ungrouped {u['jobs_s']:.1f} | | |"
    )
    rows.append(
        f"| batched == alone, {f['dtype'].removeprefix('torch.')} (64 W1 jobs, 64 tokens) | | "
        f"{f['agreement_bf16_W1']:.0%} identical | | |"
    )
    return rows


if __name__ == "__main__":
    main()
