"""One webhook POST, with the SSRF guard applied at the moment of connecting.

The URL was checked when the job was submitted, but DNS can change in between (or be made to:
DNS rebinding). So the connection classes below resolve the host themselves, refuse it if any
address is loopback/private/link-local/multicast/reserved and not allowlisted, and connect to
one of exactly the addresses that were checked. HTTPS is wrapped afterwards with the URL's host
name for SNI and certificate checks (the default SSL context). Redirects are never followed and
proxies from the environment are never used (``http.client`` knows neither).
"""

from __future__ import annotations

import http.client
import socket
import ssl
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


def _open_socket(addresses: Sequence[str], port: int, timeout: float | None) -> socket.socket:
    last: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=timeout)
        except OSError as exc:
            last = exc
    assert last is not None  # permitted_addresses never returns an empty list
    raise last


class GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, *, timeout: float, allowed: Sequence[Network]) -> None:
        super().__init__(host, port, timeout=timeout)
        self.allowed = allowed

    def connect(self) -> None:
        # The timeout given here is both the connect timeout and every read's timeout.
        addresses = permitted_addresses(self.host, self.port, self.allowed)
        self.sock = _open_socket(addresses, self.port, self.timeout)


class GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, timeout: float, allowed: Sequence[Network]) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.allowed = allowed

    def connect(self) -> None:
        addresses = permitted_addresses(self.host, self.port, self.allowed)
        sock = _open_socket(addresses, self.port, self.timeout)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    allowed: Sequence[Network],
) -> HttpReply:
    """POST ``body`` to ``url``; the reply's status (any, 3xx included: never followed).

    Raises ``AddressRefused`` when the guard refuses the host's addresses, ``DeliveryFailed``
    with a short reason for every other way of getting no reply.
    """
    try:
        parts = parse_webhook_url(url)
    except WebhookUrlNotAllowed as exc:
        raise AddressRefused(str(exc)) from None
    assert parts.hostname is not None
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    kind = GuardedHTTPSConnection if https else GuardedHTTPConnection
    connection = kind(parts.hostname, port, timeout=timeout_s, allowed=allowed)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", target, body=body, headers=dict(headers))
        response = connection.getresponse()
        response.read(_DRAIN_BYTES)
        return HttpReply(response.status, response.getheader("Retry-After"))
    except HostDoesNotResolve as exc:
        # A name that does not resolve now is worth trying again later.
        raise DeliveryFailed(exc.message) from None
    except WebhookUrlNotAllowed as exc:
        # A name that resolves to a refused address is not.
        raise AddressRefused(exc.message) from None
    except TimeoutError:
        raise DeliveryFailed(f"timed out after {timeout_s:g} s") from None
    except ssl.SSLError as exc:
        raise DeliveryFailed(f"TLS error: {exc}") from None
    except ConnectionRefusedError:
        raise DeliveryFailed("connection refused") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None
    finally:
        connection.close()
