"""``internvl-queue up`` as a user runs it: its own Redis, a GPU worker, a webhook worker, the API;
Ctrl-C stops all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
import requests

from internvl_queue import verify_webhook
from internvl_queue.cli.redis_server import free_port
from internvl_queue.cli.up import development_secret
from internvl_queue.core.settings import Settings
from internvl_queue.core.signing import generate_secret
from tests.images import photo
from tests.receiver import Receiver
from tests.user_session import UserService, leftover_processes, user_env
from tests.worker.reference import reference_answer


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


def _lines_warning_or_worse(output: str) -> list[str]:
    """Warnings, errors and tracebacks in a log, but for the open-mode banner (about the user's
    own configuration: no API key yet)."""
    noisy = ("WARNING", "Warning", "ERROR", "Error", "Traceback", "CRITICAL")
    return [
        line
        for line in output.splitlines()
        if any(word in line for word in noisy) and "internvl_queue.api.auth" not in line
    ]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``internvl-queue ARGS`` as a user types it in ``cwd``."""
    return subprocess.run(
        ["internvl-queue", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_up_demo_from_a_fresh_directory_with_defaults(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The README's service command, typed in an empty directory: no REDIS_URL, no --data-dir, the
    default port. It answers a job with the demo model's real answer; `keys create`, with nothing
    set, reaches up's own Redis; Ctrl-C leaves nothing running."""
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    env = user_env(tmp_path)
    data_dir = tmp_path / "state" / "internvl-queue"
    service = UserService(["internvl-queue", "up", "--demo"], cwd, env, tmp_path / "up.log")
    api = "http://127.0.0.1:8000"
    try:
        service.wait_ready(api, timeout=180)
        (cwd / "photo.jpg").write_bytes(photo(96, 64, seed=5))
        submitted = _run(["submit", "photo.jpg", "--question", "What is it?", "--wait"], cwd, env)
        assert submitted.returncode == 0, submitted.stderr
        expected, _ = reference_answer(
            tiny_model_dir, [photo(96, 64, seed=5)], "What is it?", max_new_tokens=512, max_tiles=12
        )
        assert expected and submitted.stdout.strip() == expected

        # `keys create` with nothing set finds up's Redis (a random port) through the data dir.
        created = _run(["keys", "create", "--name", "first"], cwd, env)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1]
        assert requests.get(f"{api}/v1/jobs/nope", timeout=5).status_code == 401
        authorized = {"Authorization": f"Bearer {key}"}
        assert requests.get(f"{api}/v1/jobs/nope", headers=authorized, timeout=5).status_code == 404
        assert (data_dir / "service.json").is_file()

        # `doctor`, with nothing set, checks the model this `up` serves (the demo), not the default.
        doctor = _run(["doctor"], cwd, env)
        [model] = [row for row in doctor.stdout.splitlines() if row[6:20].rstrip() == "model"]
        assert model.startswith("OK    model          demo:"), doctor.stdout
        assert f"the model of the internvl-queue up running as pid {service.process.pid}" in model
    finally:
        code = service.interrupt()
    output = service.output()
    assert code == 0, output
    assert _lines_warning_or_worse(output) == [], output
    assert output.count("NO API KEY EXISTS") == 1  # once, not once per API process
    assert (data_dir / "redis" / "appendonlydir").is_dir()
    assert (data_dir / "models" / "demo" / "config.json").is_file()
    assert not (data_dir / "service.json").exists()
    assert leftover_processes(str(tmp_path)) == []


def test_development_webhook_secret_is_made_once_and_kept(tmp_path: Path) -> None:
    secret, made = development_secret(tmp_path)
    assert made and secret.startswith("whsec_")
    assert (tmp_path / "webhook-secret").stat().st_mode & 0o777 == 0o600
    assert development_secret(tmp_path) == (secret, False)


def test_up_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            ["internvl-queue", "up", "--demo", "--port", str(port)],
            cwd=tmp_path,
            env=user_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"[internvl-queue up] port {port} on 127.0.0.1 is in use: stop what runs there, "
        "or pass --port"
    ]


def _wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log.read_text()}"
        time.sleep(0.1)


def test_up_owns_its_data_dir_and_sigkill_leaves_no_process(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """One `up` per data directory; its Redis is bounded (noeviction); killed with SIGKILL it
    leaves nothing running (its children die with it)."""
    port = free_port()
    env = user_env(tmp_path, INTERNVL_MODEL=str(tiny_model_dir), INTERNVL_DEVICE="cpu")
    service = UserService(
        ["internvl-queue", "up", "--port", str(port)], tmp_path, env, tmp_path / "up.log"
    )
    api = f"http://127.0.0.1:{port}"
    try:
        service.wait_ready(api, timeout=180)
        # Development mode: open unless INTERNVL_AUTH says otherwise.
        assert requests.get(f"{api}/readyz", timeout=5).json()["auth"] == "open"
        data_dir = tmp_path / "state" / "internvl-queue"
        redis_url = json.loads((data_dir / "service.json").read_text())["redis_url"]
        limits = redis.Redis.from_url(redis_url, decode_responses=True).config_get("maxmemory*")
        assert limits["maxmemory-policy"] == "noeviction"
        assert int(limits["maxmemory"]) == Settings().max_queued_bytes + 1024**3

        second = subprocess.run(
            ["internvl-queue", "up", "--port", str(free_port())],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"[internvl-queue up] another internvl-queue up (pid {service.process.pid}) is "
            f"running on {data_dir}: stop it first, or pass --data-dir to run a second service"
        ]
        assert requests.get(f"{api}/readyz", timeout=5).status_code == 200  # untouched
        assert leftover_processes(str(tmp_path)) != []  # the marker finds the running service
    finally:
        service.process.kill()
        service.process.wait(10)
        service.interrupt()
    _wait_for(lambda: leftover_processes(str(tmp_path)) == [], 60, "no leftover", service.log_path)


def test_ctrl_c_during_start_up_leaks_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = user_env(tmp_path, INTERNVL_MODEL=str(tiny_model_dir), INTERNVL_DEVICE="cpu")
    for moment in ("started redis-server", "API on"):
        home = tmp_path / moment.replace(" ", "-")
        home.mkdir()
        service = UserService(
            ["internvl-queue", "up", "--port", str(free_port()), "--data-dir", str(home / "d")],
            home,
            env,
            home / "up.log",
        )
        _wait_for(lambda: moment in service.output(), 60, moment, service.log_path)  # noqa: B023
        code = service.interrupt(timeout=60)
        assert code == 0, service.output()
        assert "stopping redis-server" in service.output()
        _wait_for(lambda: leftover_processes(str(home)) == [], 30, "no leftover", service.log_path)  # noqa: B023
