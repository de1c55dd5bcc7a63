"""``internvl-queue up`` as a user runs it: its own Redis, a worker, the API; Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from internvl_queue.cli.redis_server import free_port
from tests.images import photo


def test_up_serves_a_job_and_stops_cleanly_on_ctrl_c(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        INTERNVL_MODEL=str(tiny_model_dir), INTERNVL_DEVICE="cpu", INTERNVL_HEARTBEAT_S="0.5"
    )
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "internvl_queue",
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "var"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            try:
                if requests.get(f"{api}/readyz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        reply = requests.post(
            f"{api}/v1/jobs",
            data={"question": "What?", "max_new_tokens": "4"},
            files={"image": ("a.jpg", photo(50, 50))},
            timeout=10,
        )
        assert reply.status_code == 202
        job_id = reply.json()["id"]
        while (job := requests.get(f"{api}/v1/jobs/{job_id}", timeout=5).json())["status"] in (
            "queued",
            "running",
        ):
            time.sleep(0.1)
        assert job["status"] == "succeeded"
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=120)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output
    assert "started redis-server" in output and "stopped" in output
    assert (tmp_path / "var" / "redis" / "appendonlydir").is_dir()  # Redis ran with AOF on
    # Nothing left listening.
    try:
        requests.get(f"{api}/healthz", timeout=2)
        raise AssertionError("the API is still up")
    except requests.ConnectionError:
        pass
