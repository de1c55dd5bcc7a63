"""Who is calling: the API key of the request ("" while the API runs open)."""

from __future__ import annotations

from flask import g

__all__ = ["current_owner"]


def current_owner() -> str:
    owner: str = g.get("owner", "")
    return owner
