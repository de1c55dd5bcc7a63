"""Standard Webhooks v1 signatures: signing (the webhook worker) and verifying (your receiver).

Every attempt carries three headers::

    webhook-id:        msg_...      the same on every attempt of one event: dedupe on it
    webhook-timestamp: 1718000000   integer seconds, fresh on every attempt
    webhook-signature: v1,<base64>  HMAC-SHA256 of "{id}.{timestamp}.{body}"; one per active
                                    secret, space-separated, so a receiver can rotate secrets

A receiver (a Flask view; any framework works the same way)::

    from flask import Flask, abort, request
    from internvl_queue import WebhookVerificationError, verify_webhook

    app = Flask(__name__)
    SECRET = "whsec_..."  # the value of WEBHOOK_SECRETS given to the service

    @app.post("/hooks/internvl")
    def internvl_hook():
        try:
            event = verify_webhook(request.headers, request.get_data(), SECRET)
        except WebhookVerificationError:
            abort(400)
        if already_seen(request.headers["webhook-id"]):
            return "", 204  # a retry of an event we already handled
        handle(event["type"], event["data"])
        return "", 204

Verify the raw body bytes, before any JSON parsing: re-serialised JSON would not match. Only
the standard library is used here, so receivers can import it without the service's dependencies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets as _secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "generate_secret",
    "sign",
    "signature_header",
    "verify_webhook",
]

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300  # Standard Webhooks: reject timestamps more than 5 min off


class WebhookVerificationError(Exception):
    """Raised when a webhook's headers, timestamp or signature do not verify."""


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ followed by base64") from None


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``{msg_id}.{timestamp}.{body}`` under ``secret``."""
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, _as_bytes(body))
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def generate_secret() -> str:
    """A fresh secret for ``WEBHOOK_SECRETS``: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode()


def _header(headers: Mapping[str, str], name: str) -> str:
    # Mappings such as a plain dict are case-sensitive; HTTP header names are not.
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing {name} header")


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    secrets: str | Iterable[str],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """The webhook's JSON payload if it is signed by one of ``secrets`` and recent.

    Raises ``WebhookVerificationError`` for a missing header, a timestamp more than
    ``tolerance_s`` in the past or future (a replay), or no matching ``v1`` signature.
    """
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    header = _header(headers, "webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    now = time.time() if now is None else now
    if timestamp < now - tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too old")
    if timestamp > now + tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too far in the future")
    candidates = [secrets] if isinstance(secrets, str) else list(secrets)
    if not candidates:
        raise WebhookVerificationError("no secret to verify with")
    raw = _as_bytes(body)
    received = [
        part.split(",", 1)[1] for part in header.split() if part.startswith("v1,") and "," in part
    ]
    for secret in candidates:
        expected = sign(secret, msg_id, timestamp, raw).split(",", 1)[1]
        # Each comparison takes constant time, so timing does not reveal a near-miss.
        if any(hmac.compare_digest(expected, r) for r in received):
            break
    else:
        raise WebhookVerificationError("no matching v1 signature")
    try:
        payload = json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return payload
