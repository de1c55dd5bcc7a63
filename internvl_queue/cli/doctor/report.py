"""The doctor's result record, and how a list of them is printed and judged. No I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Check", "Level", "exit_code", "format_check", "human_bytes", "verdict"]

_SUBJECT_WIDTH = 14


class Level(StrEnum):
    OK = "OK"
    WARN = "WARN"  # a worker could start, but something is worth fixing
    FAIL = "FAIL"  # a worker could not start until this is fixed


@dataclass(frozen=True)
class Check:
    """One line of the report: what was looked at, how it went, and what was found or to do."""

    subject: str
    level: Level
    detail: str


def format_check(check: Check) -> str:
    return f"{check.level.value:<5} {check.subject:<{_SUBJECT_WIDTH}} {check.detail}"


def exit_code(checks: Iterable[Check]) -> int:
    """0 when a worker could start (no FAIL), 1 otherwise."""
    return 1 if any(c.level is Level.FAIL for c in checks) else 0


def verdict(checks: Sequence[Check], runs_on: str | None) -> str:
    """One sentence. ``runs_on`` says where the worker would compute ("the CPU, slowly"...)."""
    failed = [c.subject for c in checks if c.level is Level.FAIL]
    if failed:
        lines = "line" if len(failed) == 1 else "lines"
        names = ", ".join(dict.fromkeys(failed))  # in order, once each
        return f"A worker could not start here: fix the FAIL {lines} above ({names})."
    warnings = sum(c.level is Level.WARN for c in checks)
    where = f" and would run on {runs_on}" if runs_on else ""
    if not warnings:
        return f"A worker could start here{where}."
    plural = "warning" if warnings == 1 else "warnings"
    return f"A worker could start here{where}; read the {warnings} {plural} above."


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
