"""Worker start-up failure modes, with a real worker process."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import redis

from internvl_queue.core.settings import Settings
from internvl_queue.core.workers import WorkerRegistry
from tests.conftest import worker_env


def test_a_model_that_does_not_load_stops_the_worker(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    broken = replace(settings, model=str(tmp_path / "no-such-checkpoint"))
    worker = subprocess.Popen(
        [sys.executable, "-m", "internvl_queue", "worker"],
        env=worker_env(broken),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = worker.communicate(timeout=120)
    assert worker.returncode != 0
    assert f"INTERNVL_MODEL={broken.model} is not a directory" in output
    assert "Traceback" not in output
    # It never announced itself ready.
    assert all(info.pid != worker.pid for info in WorkerRegistry(redis_client).ready())
