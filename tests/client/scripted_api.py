"""A real HTTP server on a loopback port standing in for the API at the outermost edge: scripted
replies in order (a ``DROP`` closes the connection without a reply), every request recorded."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["DROP", "Recorded", "Scripted", "ScriptedApi", "job_json", "reply_json"]


@dataclass(frozen=True)
class Scripted:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


DROP = Scripted(0)  # no reply: the connection is closed (a process killed mid-request)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


def job_json(status: str = "queued", **changes: Any) -> dict[str, Any]:
    """A job object as the API writes it."""
    job: dict[str, Any] = {
        "id": "6f1c0000000000000000000000000001",
        "status": status,
        "created_at": "2026-11-24T14:00:00.123Z",
        "started_at": None,
        "finished_at": None,
        "expires_at": "2026-11-25T14:00:00.123Z",
        "queue_position": 1 if status == "queued" else None,
        "cancel_requested_at": None,
        "question": "What is it?",
        "params": {"max_new_tokens": 16, "max_tiles": 12, "timeout_s": 600},
        "metadata": None,
        "webhook": None,
        "result": None,
        "error": None,
    }
    return {**job, **changes}


def reply_json(status: int, body: object, **headers: str) -> Scripted:
    headers = {"Content-Type": "application/json", **headers}
    return Scripted(status, json.dumps(body).encode(), headers)


class ScriptedApi:
    def __init__(self, script: list[Scripted]) -> None:
        self.script = list(script)
        self.received: list[Recorded] = []
        self._lock = threading.Lock()
        edge = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with edge._lock:
                    edge.received.append(
                        Recorded(
                            self.command,
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                        )
                    )
                    reply = edge.script.pop(0)
                if reply is DROP:
                    self.close_connection = True
                    self.connection.shutdown(2)  # SHUT_RDWR: the client reads no reply
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> ScriptedApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
