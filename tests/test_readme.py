"""The README's commands, run literally from a fresh copy of the repository, as a new user would:
the service command (which sets up .venv itself), then the README's first request."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.user_session import UserService, leftover_processes, user_env

ROOT = Path(__file__).resolve().parent.parent
SERVICE_COMMAND = "./scripts/up.sh --demo"
FIRST_REQUEST = (
    "curl -s -H 'Prefer: wait=30' -F image=@examples/cat.jpg -F question='What animal is this?' "
    "http://127.0.0.1:8000/v1/jobs"
)


def _readme_command(readme: str, start: str) -> str:
    """The README's command that begins with ``start`` (indented in a list or a code block),
    with its backslash-continued lines, as a user would paste it."""
    lines = readme.splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith(start))
    command = [lines[index].strip()]
    while command[-1].endswith("\\"):
        index += 1
        command.append(lines[index].strip())
    return "\n".join(command)


def _fresh_copy(destination: Path) -> Path:
    """The repository as a clone of this tree would be: tracked and new, non-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def test_readme_service_command_and_first_request_from_a_fresh_copy(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"\n{SERVICE_COMMAND} " in readme
    assert f"\n{FIRST_REQUEST}\n" in readme
    clone = _fresh_copy(tmp_path / "internvl-queue")
    assert not (clone / ".venv").exists()
    env = user_env(tmp_path, activated=False)
    service = UserService(SERVICE_COMMAND.split(), clone, env, tmp_path / "up.log")
    try:
        service.wait_ready("http://127.0.0.1:8000", timeout=900)  # includes making .venv
        reply = subprocess.run(
            ["bash", "-c", FIRST_REQUEST], cwd=clone, env=env, capture_output=True, timeout=60
        )
        job = json.loads(reply.stdout)
        assert job["status"] == "succeeded", job
        assert job["result"]["answer"] and job["result"]["model"] == "demo"
        # The README's other requests against the same service, as written there.
        high = _readme_command(readme, "curl -s -F image=@examples/cat.jpg -F question='What is")
        reply = subprocess.run(
            ["bash", "-c", high], cwd=clone, env=env, capture_output=True, timeout=60
        )
        assert json.loads(reply.stdout)["priority"] == "high", reply.stdout
        metrics = _readme_command(readme, "curl -s http://127.0.0.1:8000/metrics")
        reply = subprocess.run(
            ["bash", "-c", metrics], cwd=clone, env=env, capture_output=True, timeout=60
        )
        assert b"internvl_queue_jobs_submitted_total 2.0" in reply.stdout, reply.stdout
        # The Python client's one-liner, as written: it submits, long-polls and prints the answer.
        client = _readme_command(readme, ".venv/bin/python -c")
        reply = subprocess.run(
            ["bash", "-c", client], cwd=clone, env=env, capture_output=True, timeout=120
        )
        assert reply.returncode == 0, reply.stderr
        answer = reply.stdout.decode().strip()
        assert answer and b"Traceback" not in reply.stderr, reply
        metrics_after = subprocess.run(
            ["bash", "-c", metrics], cwd=clone, env=env, capture_output=True, timeout=60
        )
        assert b"internvl_queue_jobs_submitted_total 3.0" in metrics_after.stdout
    finally:
        code = service.interrupt()
        shutil.rmtree(clone / ".venv", ignore_errors=True)  # 5 GB of CUDA torch
    output = service.output()
    assert code == 0, output
    assert "Traceback" not in output and " ERROR " not in output, output
    assert leftover_processes(str(tmp_path)) == []
