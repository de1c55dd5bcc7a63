"""A webhook receiver that never finishes its reply: one byte every ``period_s`` (slowloris in
reverse). It records each connection's ``webhook-id`` and when it opened and closed, so a test
can see how long an attempt was held and whether two attempts of one event overlapped."""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass

__all__ = ["DripConnection", "DripReceiver"]

_REPLY = b"HTTP/1.1 200 OK\r\nx-drip: " + b"a" * 10_000


@dataclass
class DripConnection:
    webhook_id: str
    opened: float  # monotonic, once the request was read
    closed: float | None = None  # monotonic, when the client hung up


class DripReceiver:
    def __init__(self, period_s: float = 0.5) -> None:
        self.period_s = period_s
        self.connections: list[DripConnection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port: int = self._server.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> DripReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.close()

    def open_now(self) -> int:
        with self._lock:
            return sum(1 for c in self.connections if c.closed is None)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
            ids = [line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]]
            names = [line.split(":", 1)[0] for line in head.split("\r\n")[1:]]
            record = DripConnection(
                dict(zip(names, ids, strict=True)).get("webhook-id", ""), time.monotonic()
            )
            with self._lock:
                self.connections.append(record)
            try:
                for byte in _REPLY:
                    readable, _, _ = select.select([conn], [], [], self.period_s)
                    # Readable with nothing to read: the client hung up (or cut us off).
                    if (readable and not conn.recv(65536)) or self._stop.is_set():
                        break
                    conn.sendall(bytes([byte]))
            except OSError:
                pass
            record.closed = time.monotonic()
