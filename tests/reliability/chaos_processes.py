"""The chaos run's processes, each tied to the test's life: started in a session of its own with
a parent-death signal (``spawn_tied``, as ``internvl-queue up`` starts its children), so that
even a test runner killed outright (SIGKILL, a CI job's timeout) leaves nothing running. The
test's own clean-up kills them first in every other case.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import requests

from internvl_queue.cli.supervisor import spawn_tied
from tests.api.api_process import ApiProcess
from tests.conftest import WorkerProcess
from tests.processes import CommandProcess
from tests.reliability.harness import WebhookWorker

__all__ = ["ApiGroup", "TiedWebhookWorker", "TiedWorker"]


def _spawn_tied(process: CommandProcess) -> subprocess.Popen[bytes]:
    return spawn_tied(
        [sys.executable, "-m", "internvl_queue", *process.args],
        process.env,
        stdout=process._log,
        stderr=subprocess.STDOUT,
    )


class TiedWorker(WorkerProcess):
    def _spawn(self) -> subprocess.Popen[bytes]:
        return _spawn_tied(self)


class TiedWebhookWorker(WebhookWorker):
    def _spawn(self) -> subprocess.Popen[bytes]:
        return _spawn_tied(self)


class ApiGroup(ApiProcess):
    """``internvl-queue api`` (gunicorn), whose process group (its own session) is the whole
    API, master and workers: killed at once, as a crashed container is, and nothing is left."""

    def _spawn(self) -> subprocess.Popen[bytes]:
        return _spawn_tied(self)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # nothing left of it
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False
