"""gunicorn's asyncio worker, with what its HTTP layer lacks for this API.

- **A deadline for a connection's first request head.** gunicorn waits for the headers of a
  connection's first request without any timeout (later requests on it are bounded by its
  keep-alive timer): a client that connects and then sends nothing, or dribbles its headers,
  holds a socket for ever, and enough of them exhaust the process's file descriptors. Here a
  connection whose first request head is not complete within ``head_timeout_s``
  (``INTERNVL_REQUEST_READ_TIMEOUT_S``) gets ``408 request_timeout`` and is closed. (Bodies are
  timed by ``api/front.py``.) The API speaks HTTP/1.1 only (gunicorn's default), where a head
  ends with an empty line.
- **A quick graceful stop.** On ``SIGTERM`` gunicorn's worker only marks itself not alive, sees
  that at its next once-a-second check, and then waits for every open connection up to
  ``graceful_timeout``: a long poll held there got an empty reply after 10 s, and connections made
  meanwhile were reset. Here the worker stops accepting at once (taking in first the connections
  the kernel already accepted for it, which closing the socket would reset; later ones are
  refused) and the front answers every open long poll at once with its job as it is; requests in
  hand finish as before.
- **Errors as JSON.** gunicorn answers what it cannot parse (a request line or header over its
  limits, a malformed request) in ``text/plain``; here with the API's error body and a stable
  ``code``, which every client reads the same way. That includes a WebSocket handshake (any
  ``GET`` with ``Upgrade: websocket``, on any path): gunicorn would run the app with a websocket
  scope and, the app not accepting it, answer an empty ``403``; here ``403
  websocket_not_supported``, before the app is involved.
- **A client's hang-up is logged as one.** A client that disconnects before its reply (mid-body,
  say) leaves the app nobody to answer; gunicorn then logs the request as ``500`` with 0 bytes,
  which pages whoever alerts on 5xx. Here its access line says ``499`` (nginx's "client closed
  request"), and nothing was sent: the client was gone.

gunicorn builds its protocol from the name ``ASGIProtocol`` in ``gunicorn.workers.gasgi`` when a
connection opens; ``ApiWorker`` points that name at ``ApiProtocol`` in its own process (after the
fork), as the worker has no hook for it. gunicorn is pinned (pyproject.toml): the protocol
methods used here (``_send_error_response``, ``_safe_write``, ``_close_transport``) are checked
by the wire tests (tests/api/test_wire.py), as are ``_handle_websocket``, ``log.access`` and
``ASGIResponseInfo``.
"""

from __future__ import annotations

import asyncio
import socket
from http import HTTPStatus
from typing import Any

from gunicorn.asgi.protocol import ASGIProtocol, ASGIResponseInfo
from gunicorn.workers import gasgi

from .front import BufferingFront, error_body

__all__ = ["ApiProtocol", "ApiWorker"]

# gunicorn's refusals, as the API's error codes, each with the sentence that says what to do.
_REFUSALS = {
    400: ("bad_request", "the request is not valid HTTP/1.1"),
    403: (
        "websocket_not_supported",
        "this API does not speak WebSocket: send plain HTTP requests (wait for a job with "
        "GET /v1/jobs/<id>?wait=30, or have a webhook_url called)",
    ),
    408: ("request_timeout", "the request head did not arrive in time; send it without pausing"),
    414: ("request_line_too_long", "the request line is too long; send a shorter URL"),
    431: ("request_headers_too_large", "the request headers are too large; send fewer or smaller"),
    501: ("not_implemented", "the server does not implement this part of the request"),
}
# HTTP/1.1 heads end with an empty line; gunicorn also accepts bare LFs.
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
# The status an access line gives a request whose client left before any reply (nginx's).
CLIENT_CLOSED_REQUEST = 499


class _ConnectionLog:
    """gunicorn's logger, seen from one connection: a request that got no reply because its
    client had gone is logged 499, not as gunicorn's 500 (see the module doc)."""

    def __init__(self, log: Any, protocol: ApiProtocol) -> None:
        self._log = log
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if self._protocol.client_gone and resp.status == 500 and resp.sent == 0:
            resp = ASGIResponseInfo(CLIENT_CLOSED_REQUEST, [], 0)
        self._log.access(resp, req, environ, request_time)


class ApiProtocol(ASGIProtocol):
    head_timeout_s = 30.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Set once the connection is lost: a request still in hand has nobody to answer.
        self.client_gone = False
        self.log = _ConnectionLog(self.worker.log, self)
        self._head_tail = b""  # the last bytes received, to find the head's end across reads
        self._head_timer: asyncio.TimerHandle | None = self.worker.loop.call_later(
            self.head_timeout_s, self._head_overdue
        )
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            seen = self._head_tail + data
            if any(end in seen for end in _HEAD_ENDS):
                self._stop_head_timer()
            else:
                self._head_tail = seen[-3:]
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_gone = True
        self._stop_head_timer()
        super().connection_lost(exc)

    async def _handle_websocket(self, request: Any, sockname: Any, peername: Any) -> None:
        # Refused here, whatever its path or version: the app serves no websocket scope, and
        # gunicorn's refusal on its behalf is an empty 403.
        self._callback_parser = None  # as gunicorn's: nothing more is read as HTTP
        self._send_error_response(403, "")
        self._close_transport()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if not self._closed:
            self._send_error_response(408, f"no complete request head in {self.head_timeout_s:g} s")
            self._close_transport()

    def _send_error_response(self, status: int, message: str, extra_headers: Any = ()) -> None:
        code, advice = _REFUSALS.get(status, ("bad_request", "the request cannot be served"))
        if status >= 500 and status != 501:
            code, advice = "internal_error", "an unexpected error occurred"
        detail = f"{advice} ({message})" if message else advice
        body = error_body(code, detail)
        extra = "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
        head = (
            f"HTTP/1.1 {status} {_reason(status)}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{extra}"
            "Connection: close\r\n"
            "\r\n"
        )
        self._safe_write(head.encode("latin-1"))
        self._safe_write(body)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class ApiWorker(gasgi.ASGIWorker):
    """``worker_class`` of ``internvl-queue api`` (see the module doc)."""

    def init_process(self) -> None:
        from ..core.settings import Settings

        ApiProtocol.head_timeout_s = Settings.from_env().request_read_timeout_s
        gasgi.ASGIProtocol = ApiProtocol
        self._taken_in: set[asyncio.Task[Any]] = set()
        super().init_process()

    def handle_exit_signal(self) -> None:
        """SIGTERM, on the event loop's thread: stop accepting and answer the long polls now."""
        super().handle_exit_signal()
        for listener in self.sockets:
            if listener.sock.fileno() != -1:  # not closed by an earlier SIGTERM
                self._take_in_accepted(listener.sock)
        for server in self.servers:
            server.close()  # gunicorn's own shutdown closes them again: a no-op then
        if isinstance(self.asgi, BufferingFront):
            self.asgi.stop_waiting()

    def _take_in_accepted(self, listening: socket.socket) -> None:
        """Serve the connections waiting in ``listening``'s accept queue: closing it would reset
        them, after their clients had sent a request. (The socket is non-blocking: asyncio's.)"""
        while True:
            try:
                connection, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # closed already, or out of descriptors: nothing more to take
                self.log.warning("stopping: could not take in a waiting connection: %s", exc)
                return
            task = self.loop.create_task(
                self.loop.connect_accepted_socket(lambda: ApiProtocol(self), connection)
            )
            self._taken_in.add(task)  # held until it ran: the loop keeps only weak references
            task.add_done_callback(self._taken_in_done)

    def _taken_in_done(self, task: asyncio.Task[Any]) -> None:
        self._taken_in.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the client left already
            self.log.debug(
                "stopping: a waiting connection could not be served: %s", task.exception()
            )
