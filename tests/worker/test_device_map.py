"""The device map of a worker that spans GPUs (INTERNVL_GPUS_PER_WORKER): planned on the meta
device, so these run on the CPU, for the tiny model and for InternVL3-78B's shape."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import InternVLForConditionalGeneration

from benchmarks.shapes import internvl3_78b_config
from internvl_queue.worker.device_map import LAYERS, layer_split, meta_model, plan_device_map
from internvl_queue.worker.model import load_model

FIRST_GPU_PARTS = (
    "lm_head",
    "model.vision_tower",
    "model.multi_modal_projector",
    "model.language_model.embed_tokens",
    "model.language_model.norm",
    "model.language_model.rotary_emb",
)


def _owner(device_map: dict[str, int], name: str) -> int:
    """The device of a parameter, by the longest key that is a module prefix of its name (as
    transformers resolves a device map)."""
    keys = [k for k in device_map if name == k or name.startswith(k + ".")]
    assert keys, f"{name} is not covered by the device map"
    return device_map[max(keys, key=len)]


def _bytes_per_gpu(model: torch.nn.Module, device_map: dict[str, int]) -> Counter[int]:
    placed: Counter[int] = Counter()
    for name, parameter in model.named_parameters():
        placed[_owner(device_map, name)] += parameter.numel() * parameter.element_size()
    return placed


@pytest.fixture(scope="module")
def model_78b() -> torch.nn.Module:
    with torch.device("meta"):
        return InternVLForConditionalGeneration(internvl3_78b_config(151_667)).to(torch.bfloat16)


def test_the_78b_shape_is_the_size_of_internvl3_78b(model_78b: torch.nn.Module) -> None:
    parameters = sum(p.numel() for p in model_78b.parameters())
    assert 78.3e9 < parameters < 78.5e9, parameters


@pytest.mark.parametrize("gpus", [2, 3, 4])
def test_the_78b_shape_is_split_in_balanced_contiguous_runs(
    model_78b: torch.nn.Module, gpus: int
) -> None:
    device_map = plan_device_map(model_78b, gpus)
    for part in FIRST_GPU_PARTS:
        assert device_map[part] == 0, part
    layers = [device_map[f"{LAYERS}.{i}"] for i in range(80)]
    assert layers == sorted(layers), layers  # contiguous runs, GPU 0 first
    assert set(layers) == set(range(gpus))  # every GPU takes layers
    placed = _bytes_per_gpu(model_78b, device_map)
    total = sum(p.numel() * p.element_size() for p in model_78b.parameters())
    assert sum(placed.values()) == total  # every parameter placed, once
    layer_bytes = sum(
        p.numel() * p.element_size() for p in model_78b.get_submodule(LAYERS)[0].parameters()
    )
    # No GPU holds more than its share by more than one decoder layer (~1.9 GB here).
    assert max(placed.values()) <= total / gpus + layer_bytes, placed
    assert max(placed.values()) / 1e9 < 157 / gpus + 2


def test_the_first_gpu_parts_stay_on_gpu_0_even_when_they_outweigh_a_share(
    tiny_model_dir: Path,
) -> None:
    # In the tiny model the embeddings and LM head outweigh its two layers: those go elsewhere.
    model = meta_model(str(tiny_model_dir), torch.float32)
    device_map = plan_device_map(model, 2)
    assert all(device_map[part] == 0 for part in FIRST_GPU_PARTS)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert {_owner(device_map, n) for n in names} == {0, 1}
    assert plan_device_map(model, 1) == dict.fromkeys(device_map, 0)


def test_layer_split_rules() -> None:
    assert layer_split(0, [1] * 8, 4) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert layer_split(3, [1] * 9, 3) == [0, 1, 1, 1, 1, 2, 2, 2, 2]  # GPU 0 carries 3 more
    assert layer_split(4, [1] * 8, 3) == [1, 1, 1, 1, 2, 2, 2, 2]  # GPU 0 full already
    assert layer_split(100, [1] * 4, 2) == [1, 1, 1, 1]
    assert layer_split(5, [1] * 3, 1) == [0, 0, 0]
    with pytest.raises(ValueError):
        layer_split(0, [1], 0)


def test_gpus_per_worker_on_the_cpu_loads_the_model_whole(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="internvl_queue.worker.model"):
        loaded = load_model(str(tiny_model_dir), "cpu", gpus=2)
    assert loaded.devices == (torch.device("cpu"),) and not loaded.sharded
    warnings = [r for r in caplog.records if "INTERNVL_GPUS_PER_WORKER=2" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"


def test_the_engine_runs_a_model_under_accelerates_hooks(tiny_model_dir: Path) -> None:
    """A model loaded with a device map carries accelerate's hooks on every mapped module, and
    the engine calls the decoder layers directly, with its own KV cache as ``past_key_values``:
    the hooks must pass that through untouched. On the CPU (every module mapped to it, hooks
    forced) the tokens are those of the model without hooks."""
    accelerate = pytest.importorskip("accelerate")
    from internvl_queue.worker.engine import Engine, EngineConfig, make_request
    from internvl_queue.worker.engine.preprocess import prepare
    from tests.images import photo

    loaded = load_model(str(tiny_model_dir), "cpu")

    def answers() -> list[list[int]]:
        engine = Engine(loaded, EngineConfig(max_wait_ms=200, group_by_length=False))
        requests = []
        for seed, (question, tokens) in enumerate([("What?", 5), ("Is there text?", 17)]):
            prepared = prepare(
                loaded.processor,
                [photo(300, 200, seed=seed)],
                question,
                max_tiles=6,
                dtype=loaded.dtype,
                max_pixels=10**8,
            )
            requests.append(engine.submit(make_request(prepared, max_new_tokens=tokens)))
        engine.start()
        try:
            return [r.future.result(timeout=120).tokens for r in requests]
        finally:
            engine.stop()

    plain = answers()
    device_map = dict.fromkeys(plan_device_map(meta_model(str(tiny_model_dir), loaded.dtype), 2))
    model = loaded.model
    accelerate.dispatch_model(
        model,
        device_map={name: "cpu" for name in device_map},
        force_hooks=True,
        skip_keys=model._skip_keys_device_placement,
    )
    assert hasattr(model.get_submodule(f"{LAYERS}.1"), "_hf_hook")
    assert answers() == plain
