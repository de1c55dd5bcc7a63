"""A real ``python -m internvl_queue ...`` child process with its output in a log file."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Self

__all__ = ["CommandProcess"]


class CommandProcess:
    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.env = dict(env)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "internvl_queue", *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def terminate(self, timeout: float) -> int:
        """A warm shutdown (SIGTERM), as an operator's, killed after ``timeout``; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def restart(self) -> Self:
        assert self.process.poll() is not None
        self.process = self._spawn()
        return self

    def close(self) -> None:
        self._log.close()
