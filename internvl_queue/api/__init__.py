"""The HTTP API: a Flask app factory. Views parse, validate through the core, and dispatch."""

from .app import create_app

__all__ = ["create_app"]
