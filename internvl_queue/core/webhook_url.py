"""The SSRF guard for webhook URLs: http(s) only, and no private addresses unless allowlisted.

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


def _refused(address: Address, allowed: Sequence[Network]) -> bool:
    if any(address in network for network in allowed):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _refused(address.ipv4_mapped, allowed)
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


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
        if _refused(address, allowed):
            raise WebhookUrlNotAllowed(
                f"the webhook host {host!r} resolves to {address}, a loopback, private, "
                "link-local or multicast address (an operator can allow it: WEBHOOK_ALLOWED_CIDRS)"
            )
    return addresses


def check_webhook_url(url: str, allowed: Sequence[Network]) -> str:
    """``url`` if it may be used as a webhook now; raises ``WebhookUrlNotAllowed`` otherwise."""
    parts = parse_webhook_url(url)
    assert parts.hostname is not None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    permitted_addresses(parts.hostname, port, allowed)
    return url
