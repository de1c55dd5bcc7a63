"""A real HTTP server on a loopback port standing in for a webhook receiver (the outermost edge)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.local_server import LocalServer

__all__ = ["Received", "Receiver", "Reply", "wait_until"]


def wait_until(check: Callable[[], bool], timeout: float, what: str, detail: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{detail}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Reply:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None  # reply only once this is set (a slow receiver)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # monotonic


class Receiver(LocalServer):
    """A real HTTP server on a loopback port: scripted replies in order, every request recorded."""

    def __init__(self, port: int | None = None, script: list[Reply] | None = None) -> None:
        super().__init__(port)
        self.script = list(script or [])
        self.received: list[Received] = []
        # Seconds each request waits before its reply (a slow receiver); may change while running.
        self.delay_s = 0.0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks?source=test"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.received.append(
                        Received(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            time.monotonic(),
                        )
                    )
                    reply = receiver.script.pop(0) if receiver.script else Reply()
                if reply.hold is not None:
                    reply.hold.wait(10)
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the worker is gone (killed mid-request)

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(Handler)
        return self

    def wait_for(self, count: int, timeout: float = 15) -> list[Received]:
        wait_until(lambda: len(self.received) >= count, timeout, f"{count} requests")
        return list(self.received)
