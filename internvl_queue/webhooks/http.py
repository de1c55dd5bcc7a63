"""One webhook POST, with the SSRF guard applied at the moment of connecting, and one deadline.

The URL was checked when the job was submitted, but DNS can change in between (or be made to:
DNS rebinding). So the connection (``core/guarded_http``, shared with image URLs) resolves the
host itself, refuses it if any address is not public (``core/special_addresses``) and not
allowlisted, with the function the submit uses, and connects to one of exactly the addresses
that were checked. Redirects are never followed and proxies from the environment are never used.

An attempt has one absolute deadline, ``timeout_s`` after it starts, for all of it: the DNS
lookup, connecting, TLS, sending and reading the reply. Socket timeouts alone bound each read,
not their sum: a receiver dripping one byte every half second would hold an attempt for as long
as it likes. So every step gets only the time left, and a timer cuts the connection off
(``shutdown``) at the deadline, whatever it is blocked in.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..core.errors import WebhookUrlNotAllowed
from ..core.guarded_http import CutOff, Deadline, GuardedHTTPConnection, GuardedHTTPSConnection
from ..core.webhook_url import (
    HostDoesNotResolve,
    Network,
    parse_webhook_url,
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
    deadline = Deadline(timeout_s)
    try:
        webhook = parse_webhook_url(url)
    except WebhookUrlNotAllowed as exc:
        raise AddressRefused(str(exc)) from None
    kind = GuardedHTTPSConnection if webhook.https else GuardedHTTPConnection
    connection = kind(webhook.host, webhook.port, deadline=deadline, allowed=allowed)
    timed_out = f"timed out: no complete reply within {timeout_s:g} s (WEBHOOK_TIMEOUT_S)"
    try:
        with CutOff(connection):
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
