"""A real ``internvl-queue api`` (gunicorn) process, for tests of what reaches the wire."""

from __future__ import annotations

import os
import time
from pathlib import Path

import requests

from internvl_queue.cli.redis_server import free_port
from tests.processes import CommandProcess

__all__ = ["ApiProcess"]


class ApiProcess(CommandProcess):
    def __init__(
        self, redis_url: str, log_path: Path, *, options: tuple[str, ...] = (), **env: str
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            ["api", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1", *options],
            # Open (no key needed) unless a test says otherwise: INTERNVL_AUTH defaults to required.
            {**os.environ, "REDIS_URL": redis_url, "LOG_LEVEL": "INFO", "INTERNVL_AUTH": "open"}
            | env,
            log_path,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the API exited\n{self.log()}"
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the API did not answer within {timeout} s\n{self.log()}")

    def stop(self) -> None:
        self.terminate(15)
        self.close()
