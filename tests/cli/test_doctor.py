"""``internvl-queue doctor``: real subprocesses against the test Redis, and its checks one by one.

Nothing here reaches the network: a hub id is either in a Hugging Face cache built here, refused by
HF_HUB_OFFLINE, or asked of a local socket that never answers.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch

from internvl_queue.cli.doctor.disk import check_disk
from internvl_queue.cli.doctor.gpu import GpuFacts, describe_gpu
from internvl_queue.cli.doctor.model import check_model
from internvl_queue.cli.doctor.redis_check import check_redis, redacted
from internvl_queue.cli.doctor.report import Check, Level, exit_code, format_check, verdict
from internvl_queue.cli.local_service import RunningService
from internvl_queue.cli.redis_server import free_port

GiB = 1024**3
HUB_ID = "OpenGVLab/InternVL3-1B-hf"
_OURS = ("INTERNVL_", "HF_", "REDIS_URL", "TRANSFORMERS_OFFLINE")


def run_doctor(
    tmp_path: Path, redis_url: str, model: str, python_code: str | None = None, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python -m internvl_queue doctor`` with only the environment the test gives it."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    command = ["-c", python_code] if python_code else ["-m", "internvl_queue", "doctor"]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, *command],
        env={
            **inherited,
            "INTERNVL_DATA_DIR": str(tmp_path / "data"),
            "HF_HOME": str(tmp_path / "hf"),
            "REDIS_URL": redis_url,
            "INTERNVL_MODEL": model,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - started


def line(output: str, subject: str) -> str:
    """The report's line about ``subject``."""
    [found] = [row for row in output.splitlines() if row[6:20].rstrip() == subject]
    return found


def test_a_local_model_on_the_cpu_could_start(
    tmp_path: Path, redis_url: str, tiny_model_dir: Path
) -> None:
    done, _ = run_doctor(tmp_path, redis_url, str(tiny_model_dir), INTERNVL_DEVICE="cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert line(out, "torch").startswith("OK") and torch.__version__ in line(out, "torch")
    assert line(out, "transformers").startswith("OK")
    if torch.cuda.is_available():
        assert "INTERNVL_DEVICE=cpu: the worker will not use" in line(out, "device")
    else:
        assert line(out, "CUDA").startswith("WARN") and "no CUDA GPU" in line(out, "CUDA")
    server = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    assert line(out, "Redis").startswith("OK") and f"Redis {server}" in line(out, "Redis")
    model = line(out, "model")
    assert model.startswith("OK") and str(tiny_model_dir) in model and "KiB" in model
    assert str(tmp_path / "hf" / "hub") in line(out, "model cache")
    assert str(tmp_path / "data") in line(out, "data dir")
    assert out.strip().splitlines()[-1].startswith("A worker could start here")


def test_a_missing_model_directory_fails_naming_INTERNVL_MODEL(
    tmp_path: Path, redis_url: str
) -> None:
    missing = tmp_path / "no-such-checkpoint"
    done, _ = run_doctor(tmp_path, redis_url, str(missing), INTERNVL_DEVICE="cpu")
    assert done.returncode == 1
    model = line(done.stdout, "model")
    assert model.startswith("FAIL") and f"INTERNVL_MODEL={missing}: no such directory" in model
    assert "INTERNVL_MODEL=demo" in model
    assert done.stdout.strip().splitlines()[-1] == (
        "A worker could not start here: fix the FAIL line above (model)."
    )
    assert "Traceback" not in done.stderr


def test_without_INTERNVL_MODEL_it_checks_the_running_services_model(
    tmp_path: Path, redis_url: str, tiny_model_dir: Path
) -> None:
    # An `up` runs from the data directory (this process stands in for it: its pid is alive).
    (tmp_path / "data").mkdir()
    service = RunningService(os.getpid(), redis_url, "http://127.0.0.1:9", str(tiny_model_dir))
    service.write(tmp_path / "data")
    done, _ = run_doctor(tmp_path, redis_url, "", INTERNVL_DEVICE="cpu", HF_HUB_OFFLINE="1")
    model = line(done.stdout, "model")
    assert model.startswith("OK") and str(tiny_model_dir) in model, done.stdout
    assert f"(the model of the internvl-queue up running as pid {os.getpid()})" in model
    assert done.returncode == 0, done.stdout

    # INTERNVL_MODEL, when set, is what is checked, and the line says so.
    done, _ = run_doctor(tmp_path, redis_url, "demo", INTERNVL_DEVICE="cpu")
    assert line(done.stdout, "model").startswith("OK    model          demo:")
    assert line(done.stdout, "model").endswith("(INTERNVL_MODEL)")


def test_with_no_model_set_and_no_service_it_says_it_checks_the_default(
    tmp_path: Path, redis_url: str
) -> None:
    done, _ = run_doctor(tmp_path, redis_url, "", INTERNVL_DEVICE="cpu", HF_HUB_OFFLINE="1")
    model = line(done.stdout, "model")
    assert f"INTERNVL_MODEL={HUB_ID}" in model, done.stdout
    assert model.endswith("(the default; set INTERNVL_MODEL to check another)")


def test_an_unreachable_redis_fails_within_seconds(tmp_path: Path, tiny_model_dir: Path) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    done, elapsed = run_doctor(tmp_path, nowhere, str(tiny_model_dir), INTERNVL_DEVICE="cpu")
    assert done.returncode == 1
    assert line(done.stdout, "Redis").startswith(f"FAIL  Redis          cannot reach {nowhere}")
    assert "REDIS_URL" in line(done.stdout, "Redis")
    assert elapsed < 20  # the imports of torch and transformers take most of it


def test_a_hub_id_offline_and_not_cached_fails_quickly(tmp_path: Path, redis_url: str) -> None:
    done, elapsed = run_doctor(
        tmp_path, redis_url, HUB_ID, INTERNVL_DEVICE="cpu", HF_HUB_OFFLINE="1"
    )
    assert done.returncode == 1
    model = line(done.stdout, "model")
    assert model.startswith("FAIL") and f"INTERNVL_MODEL={HUB_ID}" in model
    assert "HF_HUB_OFFLINE=1" in model and str(tmp_path / "hf" / "hub") in model
    assert "INTERNVL_MODEL=demo" in model and f"hf download {HUB_ID}" in model
    assert elapsed < 20


def _cache(hf_home: Path, repo_id: str, checkpoint: Path) -> Path:
    """Lay ``checkpoint`` out as huggingface_hub's cache holds a downloaded repo."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


def test_a_cached_hub_id_could_start_offline(
    tmp_path: Path, redis_url: str, tiny_model_dir: Path
) -> None:
    _cache(tmp_path / "hf", "tests/tiny-internvl", tiny_model_dir)
    done, _ = run_doctor(
        tmp_path, redis_url, "tests/tiny-internvl", INTERNVL_DEVICE="cpu", HF_HUB_OFFLINE="1"
    )
    assert done.returncode == 0, done.stdout
    model = line(done.stdout, "model")
    assert model.startswith("OK") and "in the Hugging Face cache" in model and "KiB" in model


@pytest.fixture
def silent_hub() -> Iterator[str]:
    """A hub that accepts connections and never answers (the kernel completes the handshakes)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_hub_that_never_answers_fails_within_the_timeout(
    tmp_path: Path, redis_url: str, silent_hub: str
) -> None:
    done, elapsed = run_doctor(
        tmp_path, redis_url, HUB_ID, INTERNVL_DEVICE="cpu", HF_ENDPOINT=silent_hub
    )
    assert done.returncode == 1
    model = line(done.stdout, "model")
    assert model.startswith("FAIL") and f"the hub ({silent_hub}) did not answer" in model
    assert "without network" in model and "INTERNVL_MODEL=demo" in model
    assert elapsed < 25


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_asked_for_without_a_gpu_fails(
    tmp_path: Path, redis_url: str, tiny_model_dir: Path
) -> None:
    done, _ = run_doctor(tmp_path, redis_url, str(tiny_model_dir), INTERNVL_DEVICE="cuda")
    assert done.returncode == 1
    cuda = line(done.stdout, "CUDA")
    assert cuda.startswith("FAIL") and "INTERNVL_DEVICE=cuda: the worker could not start" in cuda


# The base install: no torch, torchvision, transformers or huggingface_hub (None in sys.modules
# makes their import fail exactly as if they were not installed).
_ABSENT = ["torch", "torchvision", "transformers", "huggingface_hub"]
BASE_INSTALL = (
    f"import sys; sys.modules.update(dict.fromkeys({_ABSENT!r})); "
    "from internvl_queue.cli import main; sys.exit(main(['doctor']))"
)


def test_the_base_install_says_what_to_install(
    tmp_path: Path, redis_url: str, tiny_model_dir: Path
) -> None:
    done, _ = run_doctor(tmp_path, redis_url, str(tiny_model_dir), python_code=BASE_INSTALL)
    assert done.returncode == 1, done.stderr
    stack = line(done.stdout, "worker stack")
    assert stack.startswith("FAIL") and "torch, torchvision, transformers not installed" in stack
    assert "pip install 'internvl-queue[worker]'" in stack
    assert "not checked without torch" in line(done.stdout, "CUDA")
    assert str(tmp_path / "hf" / "hub") in line(done.stdout, "model cache")
    assert done.stdout.strip().endswith("(worker stack).")
    assert "Traceback" not in done.stderr


# -- the checks, one by one -------------------------------------------------------------------


def test_an_unreachable_redis_is_reported_at_once() -> None:
    started = time.monotonic()
    [check] = check_redis(f"redis://127.0.0.1:{free_port()}/0", "REDIS_URL")
    assert check.level is Level.FAIL and time.monotonic() - started < 2


def test_redis_without_aof_or_with_eviction_is_a_warning(
    redis_url: str, redis_client: redis.Redis
) -> None:
    reached, aof, memory = check_redis(redis_url, "REDIS_URL")
    assert reached.level is Level.OK
    assert aof.level is Level.WARN and "appendonly yes" in aof.detail  # the test Redis has none
    assert memory.level is Level.OK
    before = redis_client.config_get("maxmemory*")
    try:
        redis_client.config_set("appendonly", "yes")
        redis_client.config_set("maxmemory", str(GiB))
        redis_client.config_set("maxmemory-policy", "allkeys-lru")
        _, aof, memory = check_redis(redis_url, "REDIS_URL")
    finally:
        redis_client.config_set("appendonly", "no")
        redis_client.config_set("maxmemory", before["maxmemory"])
        redis_client.config_set("maxmemory-policy", before["maxmemory-policy"])
    assert aof.level is Level.OK
    assert memory.level is Level.WARN and "allkeys-lru" in memory.detail
    assert "noeviction" in memory.detail and "1.0 GiB" in memory.detail


def test_a_password_is_never_printed() -> None:
    assert redacted("redis://:s3cret@redis.internal:6380/2") == "redis://:***@redis.internal:6380/2"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_gpus_before_ampere_or_short_of_memory_are_warnings() -> None:
    h200 = GpuFacts(0, "NVIDIA H200", 140 * GiB, 139 * GiB, (9, 0))
    found = describe_gpu(h200)
    assert found.level is Level.OK and found.subject == "GPU 0"
    assert "NVIDIA H200, 139.0 GiB free of 140.0 GiB, compute capability 9.0" in found.detail
    assert "bf16 yes, TF32 yes" in found.detail
    t4 = describe_gpu(GpuFacts(1, "Tesla T4", 15 * GiB, 15 * GiB, (7, 5)))
    assert t4.level is Level.WARN and "bf16 no, TF32 no" in t4.detail and "emulates" in t4.detail
    busy = describe_gpu(GpuFacts(2, "NVIDIA A100", 80 * GiB, GiB, (8, 0)))
    assert busy.level is Level.WARN and "other processes" in busy.detail


def test_a_checkpoint_without_its_weights_fails(tmp_path: Path, tiny_model_dir: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial, ignore=shutil.ignore_patterns("*.safetensors"))
    found = check_model(str(partial), data_dir=tmp_path, offline=True).check
    assert found.level is Level.FAIL and "no weights" in found.detail
    empty = tmp_path / "empty"
    empty.mkdir()
    found = check_model(str(empty), data_dir=tmp_path, offline=True).check
    assert found.level is Level.FAIL and "no config.json" in found.detail


def test_the_demo_model_is_built_on_first_start(tmp_path: Path) -> None:
    found = check_model("demo", data_dir=tmp_path, offline=True).check
    assert found.level is Level.OK and str(tmp_path / "models" / "demo") in found.detail


def test_a_download_larger_than_the_free_space_fails(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    assert check_disk("model cache", tmp_path / "hub", need_bytes=free // 2).level is Level.OK
    too_big = check_disk("model cache", tmp_path / "hub", need_bytes=free * 2)
    assert too_big.level is Level.FAIL and "HF_HOME" in too_big.detail


def test_the_verdict_names_what_failed_and_counts_warnings() -> None:
    fine = [Check("torch", Level.OK, "2.14.1"), Check("CUDA", Level.WARN, "no CUDA GPU")]
    assert exit_code(fine) == 0
    assert verdict(fine, "the CPU, slowly") == (
        "A worker could start here and would run on the CPU, slowly; read the 1 warning above."
    )
    broken = [*fine, Check("Redis", Level.FAIL, "x"), Check("model", Level.FAIL, "y")]
    assert exit_code(broken) == 1
    assert verdict(broken, None).endswith("fix the FAIL lines above (Redis, model).")
    assert format_check(fine[0]) == "OK    torch          2.14.1"


def test_it_lists_the_live_workers_with_their_gpus(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str, tiny_model_dir: Path
) -> None:
    from internvl_queue.core.workers import WorkerInfo, WorkerRegistry, WorkerState

    done, _ = run_doctor(tmp_path, redis_url, str(tiny_model_dir), INTERNVL_DEVICE="cpu")
    assert "none heartbeating in this Redis yet" in line(done.stdout, "workers")

    registry = WorkerRegistry(redis_client)
    now = time.time()
    common = {"model": "m", "loaded_at": now, "last_seen": now, "queue": "internvl"}
    registry.publish(
        WorkerInfo(
            name="gpu-host:7",
            pid=7,
            device="cuda:0",
            gpu_name="NVIDIA H200",
            gpu_index=2,
            gpus=[2, 3],
            gpu_names=["NVIDIA H200", "NVIDIA H200"],
            **common,
        ),
        ttl_s=60,
    )
    registry.publish(
        WorkerInfo(
            name="gpu-host:8",
            pid=8,
            device="unknown",
            gpu_name=None,
            gpu_index=0,
            gpus=[0],
            state=WorkerState.FAILED,
            error="INTERNVL_GPUS_PER_WORKER=2 but this worker sees 1 GPU(s)",
            **common,
        ),
        ttl_s=60,
    )
    done, _ = run_doctor(tmp_path, redis_url, str(tiny_model_dir), INTERNVL_DEVICE="cpu")
    rows = {row.split()[2]: row for row in done.stdout.splitlines() if " worker gpu-host:" in row}
    assert rows["gpu-host:7"].startswith("OK")
    assert "ready on GPUs 2,3 (NVIDIA H200, NVIDIA H200), queue internvl" in rows["gpu-host:7"]
    assert rows["gpu-host:8"].startswith("WARN")
    assert "failed on GPU 0, queue internvl: INTERNVL_GPUS_PER_WORKER=2" in rows["gpu-host:8"]
    assert done.returncode == 0, done.stdout  # workers elsewhere do not stop one starting here
