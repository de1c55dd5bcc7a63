"""One supervision policy for ``internvl-queue up`` and ``internvl-queue worker --gpus``.

- Each child runs in its own session, so a Ctrl-C in the terminal reaches the supervisor only,
  which then stops the children in its own order (a warm shutdown each), instead of all of them
  being interrupted at once.
- Each child dies with the supervisor: it is started with a parent-death signal (Linux
  ``prctl(PR_SET_PDEATHSIG, SIGTERM)``), so a supervisor that is SIGKILLed, or crashes, or loses
  its terminal (SIGHUP, which the children's own sessions do not get) leaves nothing running.
- A child that exits on its own is started again: at once if it had run ``HEALTHY_RUN_S``, else
  after a back-off (1, 2, 4 ... ``MAX_BACKOFF_S`` s) so that a child that cannot start does not
  spin. After ``GIVE_UP_AFTER`` early deaths in a row the supervisor gives up on it and says so;
  what then happens is the command's: ``up`` stops everything (the service is incomplete),
  ``worker --gpus`` keeps its other GPUs serving and exits when none is left.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "GIVE_UP_AFTER",
    "HEALTHY_RUN_S",
    "MAX_BACKOFF_S",
    "Child",
    "Supervisor",
    "spawn_tied",
]

HEALTHY_RUN_S = 60.0
MAX_BACKOFF_S = 60.0
GIVE_UP_AFTER = 3

_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None]:
    """The ``preexec_fn`` of a child: SIGTERM when ``parent`` dies (Linux; elsewhere nothing)."""

    def tie() -> None:
        if not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between the fork and the prctl: then no signal would come.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return tie


def spawn_tied(
    command: Sequence[str], env: Mapping[str, str], **popen: object
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session, tied to this process's life (see the module doc).

    Linux ties the child to the *thread* that starts it: call this from a thread that lives as
    long as the child should (the main thread, in our commands)."""
    return subprocess.Popen(  # type: ignore[call-overload]
        list(command),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with(os.getpid()),
        **popen,
    )


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str]
    stop_timeout_s: float
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    early_deaths: int = 0  # consecutive deaths before HEALTHY_RUN_S
    restart_at: float = 0.0
    given_up: bool = False
    on_start: Callable[[Child], None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.children: list[Child] = []

    def add(self, child: Child) -> Child:
        self.children.append(child)
        self.start(child)
        return child

    def start(self, child: Child) -> None:
        child.process = spawn_tied(child.command, child.env)
        child.started_at = time.monotonic()
        if child.on_start is not None:
            child.on_start(child)

    def poll(self) -> list[Child]:
        """Restart children that exited and are due; the children given up on just now."""
        now = time.monotonic()
        given_up = []
        for child in self.children:
            if child.given_up:
                continue
            exited = child.process is not None and child.process.poll() is not None
            if exited and self._reap(child, now):
                given_up.append(child)
                continue
            if child.process is None and now >= child.restart_at:
                self.start(child)
        return given_up

    def _reap(self, child: Child, now: float) -> bool:
        """Schedule a restart of a child that exited on its own; True if it is given up."""
        assert child.process is not None
        code, ran = child.process.returncode, now - child.started_at
        child.early_deaths = 0 if ran >= HEALTHY_RUN_S else child.early_deaths + 1
        child.process = None
        if child.early_deaths >= GIVE_UP_AFTER:
            child.given_up = True
            self.say(
                f"{child.name} exited with code {code} after {ran:.0f} s ({GIVE_UP_AFTER} times "
                f"in a row within {HEALTHY_RUN_S:.0f} s of starting); not restarting it"
            )
            return True
        delay = min(2.0 ** (child.early_deaths - 1), MAX_BACKOFF_S) if child.early_deaths else 0
        child.restart_at = now + delay
        self.say(
            f"{child.name} exited with code {code} after {ran:.0f} s; restarting in {delay:.0f} s"
        )
        return False

    def stop(self, children: Sequence[Child] | None = None) -> None:
        """Stop ``children`` (default: all) one after the other, in the order given: SIGTERM,
        then SIGKILL after each one's ``stop_timeout_s``."""
        for child in self.children if children is None else children:
            process = child.process
            if process is None or process.poll() is not None:
                continue
            self.say(f"stopping {child.name}")
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(child.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop in {child.stop_timeout_s:.0f} s; killing it")
                process.kill()
                process.wait()

    def stop_together(self) -> None:
        """SIGTERM to every child at once, then wait for each (peers, no order among them)."""
        running = [c for c in self.children if c.running]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(max(started + child.stop_timeout_s - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop in {child.stop_timeout_s:.0f} s; killing it")
                child.process.kill()
                child.process.wait()
