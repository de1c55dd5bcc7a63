"""``internvl-queue up`` as a user runs it: its own Redis, a GPU worker, a webhook worker, the API;
Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from internvl_queue import verify_webhook
from internvl_queue.cli.redis_server import free_port
from internvl_queue.core.signing import generate_secret
from tests.images import photo
from tests.receiver import Receiver


def test_up_serves_a_job_and_stops_cleanly_on_ctrl_c(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    secret = generate_secret()
    env.update(
        INTERNVL_MODEL=str(tiny_model_dir),
        INTERNVL_DEVICE="cpu",
        INTERNVL_HEARTBEAT_S="0.5",
        WEBHOOK_SECRETS=secret,
        WEBHOOK_ALLOWED_CIDRS="127.0.0.0/8",
    )
    receiver = Receiver().start()
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
            data={"question": "What?", "max_new_tokens": "4", "webhook_url": receiver.url},
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
        # The webhook worker that up started delivers the signed event.
        [event] = receiver.wait_for(1, timeout=30)
        payload = verify_webhook(event.headers, event.body, secret)
        assert (payload["type"], payload["data"]["id"]) == ("job.succeeded", job_id)
    finally:
        receiver.stop()
        up.send_signal(signal.SIGINT)
        code = up.wait(timeout=120)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output
    assert "started redis-server" in output and "stopped" in output
    assert "stopping webhook worker" in output
    assert (tmp_path / "var" / "redis" / "appendonlydir").is_dir()  # Redis ran with AOF on
    # Nothing left listening.
    try:
        requests.get(f"{api}/healthz", timeout=2)
        raise AssertionError("the API is still up")
    except requests.ConnectionError:
        pass
