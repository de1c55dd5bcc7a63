"""The idle heap trim: freed C-heap memory goes back to the system once the worker is idle."""

from __future__ import annotations

import subprocess
import sys

import pytest

from internvl_queue.worker.memory import IdleHeapTrimmer

# In a fresh interpreter: 200 MB of 100 KB buffers (below malloc's mmap threshold, so on the
# heap), all freed but the last (which pins the heap's top, so free() alone cannot shrink it),
# then the worker's trimmer as the heartbeat calls it: busy, then idle.
_PROBE = """
from pathlib import Path
from internvl_queue.worker.memory import IdleHeapTrimmer

def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

buffers = [bytearray(100_000) for _ in range(2000)]
pinned = buffers[-1]
del buffers
freed = rss_mib()
trimmer = IdleHeapTrimmer(min_period_s=0)
trimmer.observe(busy=True)
trimmed = trimmer.observe(busy=False)
print(freed, rss_mib(), trimmed)
"""


def test_the_first_idle_heartbeat_after_work_gives_freed_memory_back() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    )
    freed, trimmed_rss, trimmed = done.stdout.split()
    print(
        f"\nRSS after free(): {float(freed):.0f} MiB; after the idle trim: {float(trimmed_rss):.0f}"
    )
    assert trimmed == "True"
    assert float(freed) - float(trimmed_rss) > 100  # most of the 200 MB went back


class _FakeClock:
    """A monotonic clock the test moves by hand (``time.monotonic`` counts from the machine's
    boot, which a test must not depend on)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _CountingTrim:
    """Stands in for ``malloc_trim``: counts the calls (what they free is the test above's)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, pad: int) -> int:
        self.calls += 1
        return 1


# Uptimes: a machine booted 2 s ago (monotonic() is small), and one up for 40 days.
UPTIMES = [pytest.param(2.0, id="just-booted"), pytest.param(40 * 86_400.0, id="up-40-days")]


@pytest.mark.parametrize("uptime_s", UPTIMES)
def test_it_trims_once_per_idle_spell_and_not_while_busy(uptime_s: float) -> None:
    clock, trim = _FakeClock(uptime_s), _CountingTrim()
    trimmer = IdleHeapTrimmer(min_period_s=0, clock=clock, trim=trim)
    assert not trimmer.observe(busy=False)  # no work since start: nothing to give back
    assert not trimmer.observe(busy=True)
    assert trimmer.observe(busy=False)
    assert not trimmer.observe(busy=False)  # still the same idle spell
    assert trim.calls == 1


@pytest.mark.parametrize("uptime_s", UPTIMES)
def test_the_first_trim_after_start_waits_for_no_period(uptime_s: float) -> None:
    """Whatever the uptime, the first idle heartbeat after work trims; later ones keep the
    period between trims."""
    clock, trim = _FakeClock(uptime_s), _CountingTrim()
    spaced = IdleHeapTrimmer(min_period_s=3600, clock=clock, trim=trim)
    spaced.observe(busy=True)
    assert spaced.observe(busy=False)  # the first trim, at once
    clock.now += 3599
    spaced.observe(busy=True)
    assert not spaced.observe(busy=False)  # within the period
    clock.now += 1
    assert spaced.observe(busy=False)  # the period is over: the work since is trimmed now
    assert trim.calls == 2
