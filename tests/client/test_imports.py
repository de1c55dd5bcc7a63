"""The client is light: importing it loads neither the service's stack nor the model's."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "flask", "celery", "kombu", "redis", "httpx", "PIL")


def test_importing_the_client_loads_nothing_heavy() -> None:
    code = (
        "import sys; from internvl_queue.client import Client, verify_webhook; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
