"""One webhook POST, with the SSRF guard applied at the moment of connecting, and one deadline.

The URL was checked when the job was submitted, but DNS can change in between (or be made to:
DNS rebinding). So the connection classes below resolve the host themselves, refuse it if any
address is not public (``core/special_addresses``) and not allowlisted, with the function the
submit uses, and connect to one of exactly the addresses that were checked. HTTPS is wrapped
afterwards with the URL's host name for SNI and certificate checks (the default SSL context).
Redirects are never followed and proxies from the environment are never used (``http.client``
knows neither).

An attempt has one absolute deadline, ``timeout_s`` after it starts, for all of it: the DNS
lookup, connecting, TLS, sending and reading the reply. Socket timeouts alone bound each read,
not their sum: a receiver dripping one byte every half second would hold an attempt for as long
as it likes. So every step gets only the time left, and a timer cuts the connection off
(``shutdown``) at the deadline, whatever it is blocked in.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..core.errors import WebhookUrlNotAllowed
from ..core.webhook_url import (
    HostDoesNotResolve,
    Network,
    parse_webhook_url,
    permitted_addresses,
)

__all__ = ["AddressRefused", "DeliveryFailed", "HttpReply", "post"]

# Enough of a reply body to let the receiver finish writing; we never need its content.
_DRAIN_BYTES = 64 * 1024


@dataclass(frozen=True)
class HttpReply:
    status_code: int
    retry_after: str | None  # the raw Retry-After header, if any


class DeliveryFailed(Exception):
    """Raised when an attempt gets no HTTP reply: DNS, connection, TLS, timeout, protocol."""


class AddressRefused(DeliveryFailed):
    """Raised when the URL resolves to an address the SSRF guard refuses."""


class _Deadline:
    """The moment an attempt must be over."""

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


def _open_socket(addresses: Sequence[str], port: int, deadline: _Deadline) -> socket.socket:
    last: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=deadline.left())
        except OSError as exc:
            last = exc
    assert last is not None  # permitted_addresses never returns an empty list
    raise last


class GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, *, deadline: _Deadline, allowed: Sequence[Network]):
        super().__init__(host, port, timeout=deadline.seconds)
        self.deadline = deadline
        self.allowed = allowed

    def _connected_socket(self) -> socket.socket:
        addresses = permitted_addresses(
            self.host, self.port, self.allowed, timeout_s=self.deadline.left()
        )
        sock = _open_socket(addresses, self.port, self.deadline)
        sock.settimeout(self.deadline.left())  # no single read outlives the attempt either
        return sock

    def connect(self) -> None:
        self.sock = self._connected_socket()


class GuardedHTTPSConnection(GuardedHTTPConnection):
    default_port = http.client.HTTPS_PORT

    def __init__(self, host: str, port: int, *, deadline: _Deadline, allowed: Sequence[Network]):
        super().__init__(host, port, deadline=deadline, allowed=allowed)
        self.tls = ssl.create_default_context()

    def connect(self) -> None:
        sock = self._connected_socket()
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class _CutOff:
    """Shuts the connection's socket down at the deadline, unblocking whatever waits on it."""

    def __init__(self, connection: GuardedHTTPConnection) -> None:
        self.connection = connection
        left = max(connection.deadline.at - time.monotonic(), 0.0)
        self.timer = threading.Timer(left, self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        sock = self.connection.sock
        if sock is not None:
            # The plain socket's shutdown, also under TLS: SSLSocket.shutdown would drop its SSL
            # object under the reading thread's feet. OSError: closed already.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def __enter__(self) -> _CutOff:
        self.timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.timer.cancel()


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    allowed: Sequence[Network],
) -> HttpReply:
    """POST ``body`` to ``url``; the reply's status (any, 3xx included: never followed).

    The whole attempt takes at most ``timeout_s``. Raises ``AddressRefused`` when the guard
    refuses the host's addresses, ``DeliveryFailed`` with a short reason for every other way of
    getting no reply.
    """
    deadline = _Deadline(timeout_s)
    try:
        webhook = parse_webhook_url(url)
    except WebhookUrlNotAllowed as exc:
        raise AddressRefused(str(exc)) from None
    kind = GuardedHTTPSConnection if webhook.https else GuardedHTTPConnection
    connection = kind(webhook.host, webhook.port, deadline=deadline, allowed=allowed)
    timed_out = f"timed out: no complete reply within {timeout_s:g} s (WEBHOOK_TIMEOUT_S)"
    try:
        with _CutOff(connection):
            connection.request("POST", webhook.target, body=body, headers=dict(headers))
            response = connection.getresponse()
            response.read(_DRAIN_BYTES)
            if deadline.passed:
                raise TimeoutError
            return HttpReply(response.status, response.getheader("Retry-After"))
    except HostDoesNotResolve as exc:
        # A name that does not resolve now (or not in time) is worth trying again later.
        raise DeliveryFailed(exc.message) from None
    except WebhookUrlNotAllowed as exc:
        # A name that resolves to a refused address is not.
        raise AddressRefused(exc.message) from None
    except TimeoutError:
        raise DeliveryFailed(timed_out) from None
    except ssl.SSLError as exc:
        raise DeliveryFailed(timed_out if deadline.passed else f"TLS error: {exc}") from None
    except ConnectionRefusedError:
        raise DeliveryFailed("connection refused") from None
    except (OSError, http.client.HTTPException) as exc:
        # Cut off at the deadline, a read ends in a closed connection: say it was the deadline.
        reason = timed_out if deadline.passed else f"{type(exc).__name__}: {exc}"
        raise DeliveryFailed(reason) from None
    finally:
        connection.close()
