"""A worker's start-up: the preprocessing processes start while the model loads (not after it),
and the worker process runs with the configured GIL switch interval."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from internvl_queue.core.settings import Settings, SettingsError
from internvl_queue.worker import model as model_module
from internvl_queue.worker.engine import Preprocessor
from internvl_queue.worker.runtime import WorkerRuntime

ROOT = Path(__file__).resolve().parents[2]


def test_the_preprocessing_processes_start_before_the_model_loads(
    tiny_model_dir: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        redis_url=redis_url, model=str(tiny_model_dir), device="cpu", preprocess_processes=2
    )
    runtime = WorkerRuntime(settings, name="startup-test")
    seen: dict[str, Any] = {}
    real_load = model_module.load_model

    def load_model(*args: Any, **kwargs: Any) -> Any:
        # What exists when the model starts loading: the pool, its processes spawned.
        seen["children"] = list(runtime.preprocessor.children()) if runtime.preprocessor else []
        return real_load(*args, **kwargs)

    monkeypatch.setattr(model_module, "load_model", load_model)
    runtime.load()
    try:
        assert len(seen["children"]) == 2, seen
        # Still the same, working processes once the worker serves.
        assert runtime.preprocessor.children() == seen["children"]
        prepared = runtime.preprocessor(
            [(ROOT / "examples/cat.jpg").read_bytes()], "What?", max_tiles=1
        )
        assert prepared.pixel_values.dtype == torch.float32
    finally:
        runtime.shutdown()


def test_a_model_that_cannot_load_leaves_no_preprocessing_process(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        redis_url=redis_url, model=str(tmp_path / "nothing"), device="cpu", preprocess_processes=2
    )
    runtime = WorkerRuntime(settings, name="startup-test")
    started: list[int] = []
    real_load = model_module.load_model

    def load_model(*args: Any, **kwargs: Any) -> Any:
        started.extend(runtime.preprocessor.children() if runtime.preprocessor else [])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(model_module, "load_model", load_model)
    with pytest.raises(OSError):
        runtime.load()
    assert len(started) == 2
    deadline = time.time() + 120  # a process still starting exits once it has started
    while any(_alive(pid) for pid in started) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in started)
    runtime.close()


def test_in_thread_preparation_needs_the_processor() -> None:
    with pytest.raises(ValueError, match="needs the processor"):
        Preprocessor("m", None, torch.float32, processes=0, max_pixels=10**8)


@pytest.mark.parametrize("value", ["0", "-1", "101"])
def test_a_gil_switch_interval_out_of_range_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="INTERNVL_GIL_SWITCH_MS"):
        Settings.from_env({"INTERNVL_GIL_SWITCH_MS": value})


def test_the_worker_process_runs_with_the_configured_switch_interval(redis_url: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "INTERNVL_GIL_SWITCH_MS": "0.5"}
    env["PYTHONPATH"] = str(ROOT)
    code = "import sys, internvl_queue.worker.main; print(sys.getswitchinterval())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert float(out.stdout.split()[-1]) == pytest.approx(0.0005)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"
