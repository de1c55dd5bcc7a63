"""Commands run as a user types them: in a fresh directory, with only the variables the README and
docs/ name, through the ``internvl-queue`` on PATH (the README says to activate ``.venv``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

__all__ = ["UserService", "leftover_processes", "user_env"]

VENV_BIN = Path(sys.executable).parent


def user_env(home: Path, *, activated: bool = True, **extra: str) -> dict[str, str]:
    """The environment of a user who set nothing of ours. ``XDG_STATE_HOME`` (which the README
    and docs/deployment.md name as where the data directory goes) keeps the test's files in
    ``home``. ``activated``: the project's virtualenv is on PATH, as after
    ``source .venv/bin/activate``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INTERNVL_", "WEBHOOK_", "HF_")) and k != "REDIS_URL"
    }
    env["XDG_STATE_HOME"] = str(home / "state")
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != VENV_BIN]
    env["PATH"] = os.pathsep.join([str(VENV_BIN), *path] if activated else path)
    env.pop("VIRTUAL_ENV", None)
    env.update(extra)
    return env


def leftover_processes(marker: str) -> list[str]:
    """Processes whose command line or environment mentions ``marker`` (a test's own path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if marker.encode() in cmdline or marker.encode() in environ:
            found.append(f"{entry.name}: {cmdline.decode(errors='replace')[:200]}")
    return found


class UserService:
    """A command that serves the API (``internvl-queue up``, ``./scripts/up.sh``), with its output
    in a log file, stopped with Ctrl-C as a user would."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, api: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.output()
            try:
                if requests.get(f"{api}/readyz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"not ready after {timeout} s\n{self.output()}"
            time.sleep(0.5)

    def interrupt(self, timeout: float = 120) -> int:
        """Ctrl-C; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        finally:
            self._log.close()
        return code
