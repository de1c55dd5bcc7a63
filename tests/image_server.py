"""A real HTTP server on a loopback port serving images (and worse) by path: the outermost edge
that image URLs are fetched from. Every GET is recorded, so a test can show that a refused URL
was never requested."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.local_server import LocalServer

__all__ = ["ImageServer", "Route"]


@dataclass(frozen=True)
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Send the body without a Content-Length (HTTP/1.0-style, ended by closing the connection),
    # so that only the bytes read can show the image is too large.
    length: bool = True
    # Send the headers, then wait for this before the body (a slow server).
    hold: threading.Event | None = None


class ImageServer(LocalServer):
    """Serves ``routes`` (path -> ``Route``) on a free loopback port; 404 for any other path."""

    def __init__(self, routes: dict[str, Route]) -> None:
        super().__init__()
        self.routes = routes
        self.requested: list[str] = []
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> ImageServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requested.append(self.path)
                route = server.routes.get(self.path, Route(404, b"not found"))
                try:
                    self.send_response(route.status)
                    for name, value in route.headers.items():
                        self.send_header(name, value)
                    if route.length:
                        self.send_header("Content-Length", str(len(route.body)))
                    else:
                        self.close_connection = True
                    self.end_headers()
                    self.wfile.flush()
                    if route.hold is not None:
                        route.hold.wait(30)
                    self.wfile.write(route.body)
                except OSError:
                    pass  # the API cut the connection off (a timeout, a body too large)

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(Handler)
        return self
