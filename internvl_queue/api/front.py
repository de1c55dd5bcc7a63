"""The API's front: reads each request whole in an event loop, then runs Flask on a thread.

Under a thread-per-request server a client that opens an upload and stalls holds a thread until
it goes away; 16 of them froze the API (2 processes x 8 threads), ``/healthz`` included. Here
gunicorn's ``asgi`` worker reads every connection in one event loop, and this front collects a
request's body there before Flask sees it, so a slow or stalled client costs a socket and a
buffer, never a thread:

- A body over ``max_body_bytes`` (or, for a path named in ``body_limits``, its own limit: a
  batch is larger than one job) is refused with ``413 request_too_large`` *after* it has been
  read and discarded (up to ``drain_limit_bytes``): a server that answers early and closes the
  connection while the client is still sending makes the kernel reset it, and most clients
  (``requests``, ``urllib``, ``httpx``) then report a broken pipe instead of the answer. A client
  that sent ``Expect: 100-continue`` gets the 413 at once and never sends the body.
- A body that stops arriving for ``read_timeout_s`` gets ``408 request_timeout`` and the
  connection is closed.
- The whole body in hand, the WSGI app runs on one of ``threads`` threads (Flask's views block
  on Redis and the broker), and its reply is sent back from the loop.
- A long poll holds no thread either: the view hands its wait over (``environ[DEFER_ENVIRON_KEY]``,
  see ``api/waiting.py``), the loop awaits it, and its reply is rendered on a thread when the
  job finished or the wait ended. A client that disconnects meanwhile ends its wait.
- When the process stops (``stop_waiting``, on gunicorn's ``SIGTERM``) every long poll is answered
  at once with its job as it is (``Retry-After: 1``), so that a restart or an upgrade costs its
  callers one quick re-poll; requests in hand finish as usual.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .waiting import DEFER_ENVIRON_KEY, DeferredWait

__all__ = ["BufferingFront", "error_body"]

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Reply = tuple[int, list[tuple[bytes, bytes]], bytes]
Observe = Callable[[str, str, int, float], None]
T = TypeVar("T")

# The status counted for a request whose client left before its reply (nginx's; gunicorn's
# access line says the same: api/gunicorn_worker.py).
CLIENT_GONE = 499


class _Refused(Exception):
    """Raised while reading a body that will not be served: the reply to send instead."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.reply = _error_reply(status, code, message)


class _Gone(Exception):
    """Raised when the client disconnected before its body was complete."""


class BufferingFront:
    """An ASGI app serving a WSGI app, with bounded, timed body reads (see the module doc)."""

    def __init__(
        self,
        wsgi_app: WsgiApp,
        *,
        max_body_bytes: int,
        read_timeout_s: float,
        threads: int,
        drain_limit_bytes: int | None = None,
        observe: Observe | None = None,
        body_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.wsgi_app = wsgi_app
        # Called with (method, path, status, seconds) once each request is answered (or its
        # client left): the HTTP metrics (api/http_metrics.py).
        self.observe = observe
        self.max_body_bytes = max_body_bytes
        # Paths whose bodies have a limit of their own (``/v1/batches``); exact paths only.
        self.body_limits = dict(body_limits or {})
        self.read_timeout_s = read_timeout_s
        # Reading and discarding a refused body costs the loop little; past this much the
        # connection is closed instead (and such a client may see a reset).
        self.drain_limit_bytes = drain_limit_bytes or 4 * max_body_bytes
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="api")
        self._stopping = asyncio.Event()  # bound to the event loop that first waits on it

    def stop_waiting(self) -> None:
        """Answer every long poll now, and any later one at once: this process is stopping.
        Call it on the event loop's thread."""
        self._stopping.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        # Anything else (websocket) is not served: returning closes it.

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.executor.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        status = await self._answer(scope, receive, send)
        if self.observe is not None:
            try:
                self.observe(scope["method"], scope["path"], status, time.monotonic() - started)
            except Exception:  # a metric must never cost a request its reply
                log.exception("could not count a request")

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Serve one request; the status sent (499 if the client left before its reply)."""
        headers = _header_dict(scope)
        limit = self.body_limits.get(scope["path"], self.max_body_bytes)
        try:
            body = await self._read_body(headers, receive, limit)
        except _Refused as refused:
            await _send(send, refused.reply)
            return refused.reply[0]
        except _Gone:  # the client's doing, so not an error; the access line says 499
            method, path = scope["method"], scope["path"]
            log.info("%s %s: the client hung up before its body was complete", method, path)
            return CLIENT_GONE
        environ = _environ(scope, headers, body)
        deferred: list[DeferredWait] = []
        environ[DEFER_ENVIRON_KEY] = deferred
        reply = await self._on_thread(lambda: _run_wsgi(self.wsgi_app, environ))
        if deferred:  # a long poll: the view's reply comes once its wait is over
            try:
                settled = await _unless_gone(
                    deferred[0].reply(self._on_thread, self._stopping), receive
                )
            except Exception:  # a bug: the view's error handlers already had their turn
                log.exception("a long poll failed")
                await _send(send, _INTERNAL_ERROR)
                return _INTERNAL_ERROR[0]
            if settled is None:
                return CLIENT_GONE  # the client went away: nobody to answer
            reply = _run_wsgi(settled, environ)  # a rendered reply, in memory: no thread needed
        await _send(send, reply)
        return reply[0]

    async def _on_thread(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def _read_body(self, headers: dict[str, str], receive: Receive, limit: int) -> bytes:
        declared = _content_length(headers)
        if declared is not None and declared > limit:
            if "100-continue" in headers.get("expect", "").lower():
                raise _too_large(limit)  # the client waits for a 100 before sending: it never will
            if declared <= max(self.drain_limit_bytes, limit):
                await self._drain(receive)
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive(receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # a chunked body with no declared length
                await self._drain(receive, already=size)
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _receive(self, receive: Receive) -> Message:
        try:
            message = await asyncio.wait_for(receive(), self.read_timeout_s)
        except TimeoutError:
            raise _Refused(
                408,
                "request_timeout",
                f"no part of the request body arrived for {self.read_timeout_s:g} s; "
                "send the whole body without pausing",
            ) from None
        if message["type"] == "http.disconnect":
            raise _Gone
        return message

    async def _drain(self, receive: Receive, already: int = 0) -> None:
        """Read and discard the rest of a refused body, up to the drain limit."""
        size = already
        while size <= self.drain_limit_bytes:
            try:
                message = await self._receive(receive)
            except (_Refused, _Gone):
                return  # stalled or gone: the refusal is sent (or not) and the connection closed
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


def _too_large(limit: int) -> _Refused:
    return _Refused(
        413, "request_too_large", f"the request body is larger than the limit of {limit} bytes"
    )


async def _unless_gone(work: Awaitable[T], receive: Receive) -> T | None:
    """``work``'s result; None (and ``work`` cancelled) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, gone):
            if not pending.done():
                pending.cancel()
    return task.result() if task.done() and not task.cancelled() else None


async def _disconnected(receive: Receive) -> None:
    """Returns when the client disconnects (the body was read whole: nothing else comes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _header_dict(scope: Scope) -> dict[str, str]:
    """Request headers by lower-case name; repeated ones joined with ", " (RFC 9110 5.3)."""
    found: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        found[name] = f"{found[name]}, {value}" if name in found else value
    return found


def _content_length(headers: dict[str, str]) -> int | None:
    value = headers.get("content-length")
    # gunicorn has refused a malformed Content-Length already; this only reads it.
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def _environ(scope: Scope, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """The PEP 3333 environ of a request whose body is read (``CONTENT_LENGTH`` is exact)."""
    server = scope.get("server") or ("127.0.0.1", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name not in ("content-length", "transfer-encoding"):
            environ[f"HTTP_{name.upper().replace('-', '_')}"] = value
    return environ


def _run_wsgi(app: WsgiApp, environ: dict[str, Any]) -> Reply:
    """Call the WSGI app on this thread; its status, headers and whole body."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda data: None  # the legacy write() callable; Flask never uses it

    try:
        result = app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    except Exception:  # Flask answers its own errors; this is a bug below it
        log.exception("the WSGI app raised")
        return _INTERNAL_ERROR
    status, headers = started
    encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return int(status.split(" ", 1)[0]), encoded, body


def error_body(code: str, message: str) -> bytes:
    """The API's JSON error body (``api/errors.py`` makes the same through Flask)."""
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _error_reply(status: int, code: str, message: str) -> Reply:
    return status, [(b"content-type", b"application/json")], error_body(code, message)


_INTERNAL_ERROR = _error_reply(500, "internal_error", "an unexpected error occurred")


async def _send(send: Send, reply: Reply) -> None:
    status, headers, body = reply
    if not any(name == b"content-length" for name, _ in headers):
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
