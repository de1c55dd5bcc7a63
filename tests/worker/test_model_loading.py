"""A worker that cannot load its model says why in one sentence, fast, and exits non-zero; while
it loads, and after it failed, ``/readyz`` says so in words."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from internvl_queue.cli.redis_server import start_redis
from internvl_queue.core.settings import Settings
from tests.user_session import user_env


@pytest.fixture
def lone_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own: the session's shared worker would make /readyz ready."""
    server = start_redis(tmp_path / "redis", persistent=False)
    yield server.url
    server.stop()


@pytest.fixture
def client(lone_redis: str, make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(Settings(redis_url=lone_redis)).test_client()


def _run_worker(env: dict[str, str], cwd: Path) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "internvl_queue", "worker"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


@pytest.mark.parametrize(
    ("model_env", "says"),
    [
        # The default hub model, and no network (these machines reach no hub).
        ({}, "INTERNVL_MODEL=OpenGVLab/InternVL3-1B-hf cannot be downloaded"),
        (
            {"HF_HUB_OFFLINE": "1"},
            "INTERNVL_MODEL=OpenGVLab/InternVL3-1B-hf is not in the local Hugging Face cache",
        ),
        ({"INTERNVL_MODEL": "./no-such-checkpoint"}, "INTERNVL_MODEL=./no-such-checkpoint is not"),
        ({"INTERNVL_MODEL": "no/such/id/at/all"}, "INTERNVL_MODEL=no/such/id/at/all is neither"),
    ],
)
def test_a_model_that_cannot_load_fails_fast_in_one_sentence(
    model_env: dict[str, str],
    says: str,
    lone_redis: str,
    client: FlaskClient,
    tmp_path: Path,
) -> None:
    env = user_env(tmp_path, REDIS_URL=lone_redis, HF_HOME=str(tmp_path / "hf"), **model_env)
    code, output, took = _run_worker(env, tmp_path)
    assert code != 0, output
    assert took < 30, output
    assert "Traceback" not in output, output
    [sentence] = [line for line in output.splitlines() if "ERROR" in line]
    assert says in sentence, output
    # The one sentence says what to do, too.
    assert "INTERNVL_MODEL" in sentence.split(says, 1)[1] or "hub id" in sentence, sentence

    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["message"].startswith("no worker is ready: ")
    assert says in ready.json["message"]
    [worker] = ready.json["workers"]
    assert worker["state"] == "failed" and says in worker["error"]


def test_readyz_shows_the_worker_loading_then_ready(
    lone_redis: str, client: FlaskClient, tmp_path: Path
) -> None:
    env = user_env(
        tmp_path,
        REDIS_URL=lone_redis,
        INTERNVL_MODEL="demo",
        INTERNVL_DEVICE="cpu",
        INTERNVL_DATA_DIR=str(tmp_path / "data"),
        INTERNVL_HEARTBEAT_S="0.5",
    )
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "internvl_queue", "worker"], env=env, stdout=log, stderr=log
    )
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while (reply := client.get("/readyz")).status_code != 200:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, seen
            seen.append(reply.json["message"])
            time.sleep(0.1)
        assert reply.json["workers"][0]["state"] == "ready"
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()
    loading = [m for m in seen if "is loading demo (for" in m]
    assert loading, seen
    assert loading[0].startswith("no worker is ready yet: ")
    assert (tmp_path / "data" / "models" / "demo" / "config.json").is_file()
