"""The supervision policy shared by `up` and `worker --gpus` (cli/supervisor.py), with real
processes: children die with their parent, however it dies; a child that keeps dying at once is
restarted with a back-off, then given up."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from internvl_queue.cli.supervisor import GIVE_UP_AFTER, Child, Supervisor

_SPAWNS_A_SLEEPER = """
import os, sys, time
from internvl_queue.cli.supervisor import spawn_tied
child = spawn_tied([sys.executable, "-c", "import time; time.sleep(120)"], os.environ)
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_child_dies_with_its_sigkilled_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _SPAWNS_A_SLEEPER], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the child outlived its SIGKILLed parent"
            time.sleep(0.05)
    finally:
        parent.stdout.close()
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_child_that_keeps_dying_is_restarted_with_a_back_off_then_given_up() -> None:
    said: list[str] = []
    supervisor = Supervisor(said.append)
    starts: list[float] = []
    child = Child(
        "flaky",
        [sys.executable, "-c", "import sys; sys.exit(3)"],
        dict(os.environ),
        stop_timeout_s=5,
        on_start=lambda c: starts.append(time.monotonic()),
    )
    supervisor.add(child)
    deadline = time.monotonic() + 30
    given_up: list[Child] = []
    while not given_up:
        assert time.monotonic() < deadline, said
        given_up = supervisor.poll()
        time.sleep(0.05)
    assert given_up == [child] and child.given_up
    assert len(starts) == GIVE_UP_AFTER
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert 0.9 < gaps[0] < 2.0 and 1.9 < gaps[1] < 3.0, gaps  # 1 s, then 2 s
    assert said[:2] == [
        "flaky exited with code 3 after 0 s; restarting in 1 s",
        "flaky exited with code 3 after 0 s; restarting in 2 s",
    ]
    assert said[2] == (
        f"flaky exited with code 3 after 0 s ({GIVE_UP_AFTER} times in a row within 60 s of "
        "starting); not restarting it"
    )
    assert supervisor.poll() == []  # given up for good: not started again
    assert len(starts) == GIVE_UP_AFTER
