"""Strict JSON in: RFC 8259 only (no ``NaN``/``Infinity``), nested a bounded number of levels.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``-Infinity``, which no strict client can read
back, and it recurses once per nesting level, so 200 KB of ``[[[[...`` raises ``RecursionError``.
Everything a caller sends as JSON comes through here, and a refusal says why in words.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["MAX_DEPTH", "NotStrictJson", "check", "loads", "parse"]

# Far deeper than any sensible metadata or request, far shallower than the interpreter's stack.
MAX_DEPTH = 32


class NotStrictJson(ValueError):
    """Raised when text is not strict JSON, holds NaN/Infinity, or is nested too deeply."""


class _NonFinite:
    """What ``parse`` puts where the text had NaN, Infinity or -Infinity (``check`` refuses it)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def parse(text: str | bytes) -> Any:
    """The value of ``text``, with ``_NonFinite`` markers for NaN/Infinity (see ``check``)."""
    try:
        return json.loads(text, parse_constant=_NonFinite)
    except RecursionError:
        raise NotStrictJson("it is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for undecodable bytes
        raise NotStrictJson(f"it is not valid JSON ({exc})") from None


def check(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise ``NotStrictJson`` if ``value`` holds NaN/Infinity or nests deeper than
    ``max_depth`` (walked without recursion, so any depth is safe to check)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, _NonFinite) or (isinstance(item, float) and not math.isfinite(item)):
            raise NotStrictJson(f"it holds {item!r}, which is not a JSON number")
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise NotStrictJson(f"it is nested more than {max_depth} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``parse`` then ``check``: the value of ``text`` if it is strict JSON."""
    value = parse(text)
    check(value, max_depth=max_depth)
    return value
