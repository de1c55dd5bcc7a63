"""The SSRF guard for webhook URLs: http(s) only, and only public addresses unless allowlisted.

A URL is checked when a job is submitted (a refused one is a 422) and again, against every
address its host resolves to, each time a delivery connects: DNS may have changed in between.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import SplitResult, urlsplit

from .errors import WebhookUrlNotAllowed

__all__ = [
    "HostDoesNotResolve",
    "Network",
    "check_webhook_url",
    "parse_webhook_url",
    "permitted_addresses",
    "refused_address",
    "resolve",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_CHARS = 2048

# How long a lookup may take when nothing tighter is given (a submit, in the API's request thread).
DNS_TIMEOUT_S = 3.0


class HostDoesNotResolve(WebhookUrlNotAllowed):
    """Raised when a webhook host has no address now (refused at submit, retried at delivery)."""


def parse_webhook_url(url: str) -> SplitResult:
    """The URL split into parts; ``WebhookUrlNotAllowed`` unless it is a plain http(s) URL."""
    if len(url) > MAX_URL_CHARS:
        raise WebhookUrlNotAllowed(f"webhook_url is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise WebhookUrlNotAllowed("webhook_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookUrlNotAllowed("webhook_url must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise WebhookUrlNotAllowed("webhook_url must not carry credentials")
    return parts


# NAT64's well-known prefix (RFC 6052): the last 32 bits are an IPv4 address a NAT64 gateway
# connects to, so 64:ff9b::a9fe:a9fe reaches 169.254.169.254.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _wrapped(address: Address) -> list[Address]:
    """The IPv4 addresses an IPv6 address carries and may be routed to: IPv4-mapped, 6to4
    (2002::/16), Teredo (2001::/32: its server and its client) and NAT64."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    inner: list[Address] = []
    if address.ipv4_mapped is not None:
        inner.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        inner.append(address.sixtofour)
    if address.teredo is not None:
        inner.extend(address.teredo)
    if address in _NAT64:
        inner.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return inner


def refused_address(address: Address, allowed: Sequence[Network]) -> bool:
    """Whether a webhook may not connect to ``address``.

    Only globally routable addresses are allowed (``is_global``): that leaves out loopback,
    private, link-local, carrier-grade NAT (100.64.0.0/10, where cloud metadata services such as
    100.100.100.200 live), documentation, benchmarking, reserved and multicast ranges. An IPv6
    address that wraps an IPv4 one is refused if the wrapped one is. ``allowed`` networks (the
    operator's ``WEBHOOK_ALLOWED_CIDRS``) are always permitted.
    """
    if any(address in network for network in allowed):
        return False
    inner = _wrapped(address)
    if inner and all(any(i in network for network in allowed) for i in inner):
        return False  # e.g. ::ffff:127.0.0.1 when 127.0.0.0/8 is allowed
    if address.is_multicast or not address.is_global:
        return True
    return any(refused_address(i, allowed) for i in inner)


def _kind(address: Address) -> str:
    """A word for why an address is refused, for the message."""
    inner = _wrapped(address)
    if inner and address.is_global:
        return f"{_kind(inner[0])} (wrapped in IPv6)"
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if address in _SHARED:
        return "carrier-grade NAT"
    return "special-purpose"


_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


# getaddrinfo cannot be interrupted, so lookups run here and the caller stops waiting at its
# deadline. A lookup that hangs holds one of these threads until the system resolver gives up;
# when all are held, further lookups queue and time out too, instead of piling up threads.
_RESOLVERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dns")


def resolve(host: str, port: int, timeout_s: float) -> list[str]:
    """The addresses of ``host`` for a TCP connection (from ``getaddrinfo``), given up after
    ``timeout_s``: ``HostDoesNotResolve`` if it has none, or none came in time."""
    lookup = _RESOLVERS.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=max(timeout_s, 0.0))
        return list(dict.fromkeys(str(info[4][0]) for info in infos))
    except TimeoutError:
        lookup.cancel()
        raise HostDoesNotResolve(
            f"the webhook host {host!r} did not resolve within {timeout_s:g} s"
        ) from None
    except (OSError, UnicodeError) as exc:
        raise HostDoesNotResolve(f"the webhook host {host!r} does not resolve: {exc}") from None


def permitted_addresses(
    host: str, port: int, allowed: Sequence[Network], *, timeout_s: float = DNS_TIMEOUT_S
) -> list[str]:
    """Every address ``host`` resolves to, if all are permitted; else ``WebhookUrlNotAllowed``.

    All of them are checked, not only the first, so a name with one public and one private
    address cannot be used to reach the private one. The lookup is given up after ``timeout_s``.
    """
    addresses = resolve(host, port, timeout_s)
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if refused_address(address, allowed):
            raise WebhookUrlNotAllowed(
                f"the webhook host {host!r} resolves to {address}, a {_kind(address)} "
                "address, not a public (globally routable) one; use a public receiver (an "
                "operator can allow internal networks with WEBHOOK_ALLOWED_CIDRS)"
            )
    return addresses


def check_webhook_url(url: str, allowed: Sequence[Network]) -> str:
    """``url`` if it may be used as a webhook now; raises ``WebhookUrlNotAllowed`` otherwise."""
    parts = parse_webhook_url(url)
    assert parts.hostname is not None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    permitted_addresses(parts.hostname, port, allowed)
    return url
