"""The SSRF guard for webhook URLs: deliverable http(s) URLs to public addresses only.

A URL is checked when a job is submitted (a refused one is a 422) and again, against every
address its host resolves to, each time a delivery connects: DNS may have changed in between.
Which addresses are public is decided in ``special_addresses``, from explicit tables.

A URL is also refused when the delivery could never send it (``webhook_url_invalid``): the
delivery (``webhooks/http.py``) sends the host and the request target through ``http.client``,
which refuses control characters and spaces and cannot encode non-ASCII, and resolves the host
with ``getaddrinfo``, which takes names through Python's IDNA 2003 codec (that maps some
international names to other hosts than IDNA 2008 does). So a URL must be printable ASCII, its
host a DNS name (letters, digits, hyphens, underscores) or an IP address, and its port 1-65535.
Standard library only, like ``special_addresses``.

Image URLs fetched at submit (``image_urls``) are parsed and checked by the same functions: their
``name`` argument words the messages for the field at hand.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import WebhookUrlInvalid, WebhookUrlNotAllowed
from .special_addresses import Address, embedding, not_a_destination, refusal

__all__ = [
    "WHAT_TO_DO",
    "HostDoesNotResolve",
    "Network",
    "WebhookUrl",
    "check_webhook_url",
    "parse_webhook_url",
    "permitted_addresses",
    "refused_address",
    "resolve",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_CHARS = 2048

# How long a lookup may take when nothing tighter is given (a submit, in the API's request thread).
DNS_TIMEOUT_S = 3.0

# What a refused caller can do (the image URL fetch says its own: ``image_urls``).
WHAT_TO_DO = (
    "use a public receiver (an operator can allow internal networks with WEBHOOK_ALLOWED_CIDRS)"
)


class HostDoesNotResolve(WebhookUrlNotAllowed):
    """Raised when a webhook host has no address now (refused at submit, retried at delivery)."""


@dataclass(frozen=True)
class WebhookUrl:
    """What a delivery needs of a webhook URL, parsed once, the same way at submit and delivery."""

    https: bool
    host: str  # a DNS name (lower case) or an IP address, IPv6 without brackets
    port: int
    target: str  # the request target: the path ("/" if none) and the query


def _refuse_characters(url: str, name: str) -> None:
    for index, char in enumerate(url):
        if " " < char < "\x7f":
            continue
        code = f"U+{ord(char):04X}"
        where = f"at position {index + 1}"
        if unicodedata.category(char) == "Cc":
            raise WebhookUrlInvalid(
                f"{name} contains a control character ({code}) {where}; remove it"
            )
        if char.isspace():
            raise WebhookUrlInvalid(
                f"{name} contains whitespace ({code}) {where}; percent-encode it (%20) or remove it"
            )
        raise WebhookUrlInvalid(
            f"{name} contains the non-ASCII character {char!r} ({code}) {where}; "
            "percent-encode it in the path or query, and write an international host name in "
            "its ASCII (xn--) form"
        )


# A DNS label as the resolver and http.client take it. Underscores are not hostname syntax
# (RFC 1123) but are valid DNS and sent as they are, so they are allowed.
_LABEL = re.compile(r"[a-z0-9_-]{1,63}\Z")
# A last label that URL parsers (WHATWG) and inet_aton read as a number: 127.1, 0x7f.1, 2130706433.
_NUMERIC = re.compile(r"(0x[0-9a-f]*|[0-9]+)\Z")


def _port(text: str, name: str) -> int | None:
    if text == "":
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535):
        raise WebhookUrlInvalid(f"{name}'s port {text!r} is not a number from 1 to 65535")
    return int(text)


def _bracketed(netloc: str, name: str) -> tuple[str, int | None]:
    end = netloc.find("]")
    literal, rest = netloc[1:end], netloc[end + 1 :]
    if end < 0 or not (rest == "" or rest.startswith(":")):
        raise WebhookUrlInvalid(f"{name}'s host {netloc!r} is not a bracketed IPv6 address")
    if "%" in literal:
        raise WebhookUrlInvalid(
            f"{name}'s host [{literal}] has a zone (%), which a URL here cannot use"
        )
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        raise WebhookUrlInvalid(f"{name}'s host [{literal}] is not an IPv6 address") from None
    return literal.lower(), _port(rest[1:], name)


def _named(netloc: str, name: str) -> tuple[str, int | None]:
    host, _, port = netloc.partition(":")
    if ":" in port:
        raise WebhookUrlInvalid(
            f"{name}'s host {netloc!r} has more than one ':'; write an IPv6 address in "
            "brackets, like http://[2001:db8::1]/"
        )
    host = host.lower()
    if not host:
        raise WebhookUrlInvalid(f"{name} has no host")
    labels = (host[:-1] if host.endswith(".") else host).split(".")
    if _NUMERIC.match(labels[-1]):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise WebhookUrlInvalid(
                f"{name}'s host {host!r} is neither a DNS name nor an IPv4 address in "
                "dotted-decimal form (like 192.0.2.1)"
            ) from None
        return host, _port(port, name)
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise WebhookUrlInvalid(
            f"{name}'s host {host!r} is not a valid DNS name: labels of 1 to 63 letters, "
            "digits, hyphens or underscores, separated by dots"
        )
    return host, _port(port, name)


def _host_and_port(netloc: str, name: str) -> tuple[str, int | None]:
    return _bracketed(netloc, name) if netloc.startswith("[") else _named(netloc, name)


# The authority (host and port) of a URL, as urlsplit finds it (RFC 3986 §3.2).
_AUTHORITY = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]*)")


def parse_webhook_url(url: str, *, name: str = "webhook_url") -> WebhookUrl:
    """``url`` parsed for a delivery; ``WebhookUrlNotAllowed`` unless it is a plain http(s) URL
    (its subclass ``WebhookUrlInvalid`` if it could never be sent). ``name``: the field that
    messages name (an image URL is parsed here too: ``image_urls``)."""
    if len(url) > MAX_URL_CHARS:
        raise WebhookUrlNotAllowed(f"{name} is longer than {MAX_URL_CHARS} characters")
    # First, so that urlsplit (which drops tabs and newlines, and strips leading control
    # characters and spaces, differently across patch releases) sees only printable ASCII.
    _refuse_characters(url, name)
    try:
        parts = urlsplit(url)
    except ValueError:
        # urlsplit refuses some bracketed hosts, which ones depending on the patch release:
        # name the fault the same way everywhere.
        authority = _AUTHORITY.match(url)
        if authority:
            _host_and_port(authority.group(1), name)
        raise WebhookUrlInvalid(f"{name} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise WebhookUrlNotAllowed(f"{name} must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise WebhookUrlNotAllowed(f"{name} must not carry credentials")
    https = parts.scheme == "https"
    host, port = _host_and_port(parts.netloc, name)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebhookUrl(https, host, port or (443 if https else 80), target)


def _allowed(address: Address, allowed: Sequence[Network]) -> bool:
    return any(address in network for network in allowed)


def refused_address(address: Address, allowed: Sequence[Network]) -> str | None:
    """Why a webhook may not connect to ``address`` (one phrase naming its class), or None.

    Only public unicast addresses (``special_addresses``) are permitted, and ``allowed``
    networks (the operator's ``WEBHOOK_ALLOWED_CIDRS``): an address in one of them, or an IPv6
    address whose wrapped IPv4 addresses all are (``::ffff:127.0.0.1`` when ``127.0.0.0/8`` is
    allowed). Multicast, broadcast and unspecified addresses are refused even then.
    """
    never = not_a_destination(address)
    if never:
        return never
    if _allowed(address, allowed):
        return None
    wrapping = embedding(address)
    if wrapping and wrapping.allowlist_by_ipv4:
        inner = wrapping.decode(int(address))
        if all(_allowed(ipv4, allowed) for ipv4 in inner):
            return None
    return refusal(address)


def _refused(
    host: str, address: Address, why: str, literal: bool, name: str, remedy: str
) -> WebhookUrlNotAllowed:
    said = (
        f"{name}'s address {address} is"
        if literal
        else (f"{name}'s host {host!r} resolves to {address},")
    )
    if not_a_destination(address):
        return WebhookUrlNotAllowed(f"{said} {why}, which takes no connection")
    return WebhookUrlNotAllowed(f"{said} {why}, not a public address; {remedy}")


# getaddrinfo cannot be interrupted, so lookups run here and the caller stops waiting at its
# deadline. A lookup that hangs holds one of these threads until the system resolver gives up;
# when all are held, further lookups queue and time out too, instead of piling up threads.
_RESOLVERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dns")


def resolve(host: str, port: int, timeout_s: float, *, name: str = "webhook_url") -> list[str]:
    """The addresses of ``host`` for a TCP connection (from ``getaddrinfo``), given up after
    ``timeout_s``: ``HostDoesNotResolve`` if it has none, or none came in time."""
    lookup = _RESOLVERS.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=max(timeout_s, 0.0))
        return list(dict.fromkeys(str(info[4][0]) for info in infos))
    except TimeoutError:
        lookup.cancel()
        raise HostDoesNotResolve(
            f"{name}'s host {host!r} did not resolve within {timeout_s:g} s"
        ) from None
    except (OSError, UnicodeError) as exc:
        raise HostDoesNotResolve(f"{name}'s host {host!r} does not resolve: {exc}") from None


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def permitted_addresses(
    host: str,
    port: int,
    allowed: Sequence[Network],
    *,
    timeout_s: float = DNS_TIMEOUT_S,
    name: str = "webhook_url",
    remedy: str = WHAT_TO_DO,
) -> list[str]:
    """Every address ``host`` resolves to, if all are permitted; else ``WebhookUrlNotAllowed``.

    All of them are checked, not only the first, so a name with one public and one private
    address cannot be used to reach the private one. The lookup is given up after ``timeout_s``;
    an IP address is not looked up. ``name`` and ``remedy`` word a refusal.
    """
    literal = _literal(host)
    addresses = [host] if literal else resolve(host, port, timeout_s, name=name)
    for text in addresses:
        address = literal or ipaddress.ip_address(text.split("%", 1)[0])
        why = refused_address(address, allowed)
        if why:
            raise _refused(host, address, why, literal is not None, name, remedy)
    return addresses


def check_webhook_url(url: str, allowed: Sequence[Network]) -> str:
    """``url`` if it may be used as a webhook now; raises ``WebhookUrlNotAllowed`` otherwise
    (``WebhookUrlInvalid`` if it could never be delivered)."""
    webhook = parse_webhook_url(url)
    permitted_addresses(webhook.host, webhook.port, allowed)
    return url
