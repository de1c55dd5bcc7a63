"""HTTP connections with the SSRF guard applied at the moment of connecting, and one deadline.

Shared by webhook deliveries (``webhooks/http.py``) and image URLs fetched at submit
(``core/image_urls.py``). A URL is checked when it is accepted, but DNS can change in between
(or be made to: DNS rebinding). So the connection classes below resolve the host themselves,
refuse it if any address is not public (``core/special_addresses``) and not allowlisted, with
the function the submit uses (``webhook_url.permitted_addresses``), and connect to one of exactly
the addresses that were checked. HTTPS is wrapped afterwards with the URL's host name for SNI and
certificate checks (the default SSL context). Redirects are never followed here and proxies from
the environment are never used (``http.client`` knows neither).

An exchange has one absolute deadline (``Deadline``) for all of it: the DNS lookup, connecting,
TLS, sending and reading the reply. Socket timeouts alone bound each read, not their sum: a peer
dripping one byte every half second would hold a thread for as long as it likes. So every step
gets only the time left, and a timer (``CutOff``) cuts the connection off (``shutdown``) at the
deadline, whatever it is blocked in. Standard library only.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Sequence

from .webhook_url import WHAT_TO_DO, Network, permitted_addresses

__all__ = ["CutOff", "Deadline", "GuardedHTTPConnection", "GuardedHTTPSConnection"]


class Deadline:
    """The moment an exchange must be over."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; ``TimeoutError`` once none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.at


def _open_socket(addresses: Sequence[str], port: int, deadline: Deadline) -> socket.socket:
    last: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=deadline.left())
        except OSError as exc:
            last = exc
    assert last is not None  # permitted_addresses never returns an empty list
    raise last


class GuardedHTTPConnection(http.client.HTTPConnection):
    """``name`` and ``remedy`` word a refusal (``webhook_url.permitted_addresses``)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        deadline: Deadline,
        allowed: Sequence[Network],
        name: str = "webhook_url",
        remedy: str = WHAT_TO_DO,
    ):
        super().__init__(host, port, timeout=deadline.seconds)
        self.deadline = deadline
        self.allowed = allowed
        self.name = name
        self.remedy = remedy
        # The plain socket, kept for ``CutOff``: a reply without a length (read until the peer
        # closes) takes the socket over, and ``self.sock`` is None while it is read.
        self.raw_socket: socket.socket | None = None

    def _connected_socket(self) -> socket.socket:
        addresses = permitted_addresses(
            self.host,
            self.port,
            self.allowed,
            timeout_s=self.deadline.left(),
            name=self.name,
            remedy=self.remedy,
        )
        sock = _open_socket(addresses, self.port, self.deadline)
        sock.settimeout(self.deadline.left())  # no single read outlives the exchange either
        self.raw_socket = sock
        return sock

    def connect(self) -> None:
        self.sock = self._connected_socket()


class GuardedHTTPSConnection(GuardedHTTPConnection):
    default_port = http.client.HTTPS_PORT

    def __init__(
        self,
        host: str,
        port: int,
        *,
        deadline: Deadline,
        allowed: Sequence[Network],
        name: str = "webhook_url",
        remedy: str = WHAT_TO_DO,
    ):
        super().__init__(host, port, deadline=deadline, allowed=allowed, name=name, remedy=remedy)
        self.tls = ssl.create_default_context()

    def connect(self) -> None:
        sock = self._connected_socket()
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class CutOff:
    """Shuts the connection's socket down at the deadline, unblocking whatever waits on it."""

    def __init__(self, connection: GuardedHTTPConnection) -> None:
        self.connection = connection
        left = max(connection.deadline.at - time.monotonic(), 0.0)
        self.timer = threading.Timer(left, self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        sock = self.connection.raw_socket
        if sock is not None:
            # The plain socket's shutdown, also under TLS: SSLSocket.shutdown would drop its SSL
            # object under the reading thread's feet (``socket.socket.shutdown`` on the wrapped
            # socket is the same call). OSError: closed already.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def __enter__(self) -> CutOff:
        self.timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.timer.cancel()
