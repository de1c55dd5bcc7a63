"""Raw HTTP/1.1 over a socket, for what ``requests`` cannot do: stall, hold hundreds of
connections without a thread each, or send what no client library would."""

from __future__ import annotations

import socket

__all__ = ["read_reply"]


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection or goes quiet."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data
        if not chunk:
            return data
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
        if length and len(body) >= int(length[0].split(b":")[1]):
            return data
