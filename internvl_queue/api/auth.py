"""Bearer API keys on every ``/v1/`` request; ``/healthz`` and ``/readyz`` stay open.

Whether keys are required is decided per request, not at start-up: as soon as one active key
exists (one made with ``internvl-queue keys create`` a second ago included) every ``/v1/`` request
must carry ``Authorization: Bearer <key>``; while none exists the API runs open, for local
development, and says so loudly when it starts. The authenticated key's id is the request's
owner (``current_owner()``), ``""`` when open.

A Redis error fails closed (503): an API that cannot tell whether keys exist must not serve.
"""

from __future__ import annotations

import logging

import redis
from flask import Flask, g, request

from ..core.apikeys import ApiKeyStore, parse_key
from ..core.errors import ServiceUnavailable, Unauthorized
from .services import services

__all__ = ["current_owner", "register_auth", "warn_if_no_key"]

log = logging.getLogger(__name__)

_PROTECTED_PREFIX = "/v1/"

_OPEN_WARNING = """
**********************************************************************************
*  NO API KEY EXISTS: THE API IS OPEN TO ANYONE WHO CAN REACH IT.
*  This is meant for local development only. Create a key to require one on every
*  /v1/ request (it takes effect at once, no restart needed):
*      internvl-queue keys create --name NAME
**********************************************************************************"""


def current_owner() -> str:
    """The id of the API key that made this request; ``""`` when the API runs open."""
    owner: str = g.get("owner", "")
    return owner


def register_auth(app: Flask, *, warn_if_open: bool = True) -> None:
    """Require a key on ``/v1/`` requests; warn now if there is none. Call after the services."""
    if warn_if_open:
        with app.app_context():
            warn_if_no_key(services().api_keys)
    app.before_request(_authenticate)


def warn_if_no_key(keys: ApiKeyStore) -> None:
    """Log the open-mode warning if no active API key exists."""
    try:
        open_ = not keys.any_active()
    except redis.RedisError as exc:
        log.warning("could not check for API keys (%s); requests fail until Redis answers", exc)
        return
    if open_:
        log.warning(_OPEN_WARNING)


def _authenticate() -> None:
    if not (request.path + "/").startswith(_PROTECTED_PREFIX):
        return
    keys = services().api_keys
    header = request.headers.get("Authorization")
    try:
        if header is not None and (key_id := _owner_from(header, keys)) is not None:
            g.owner = key_id
            return
        # Asked only when no key authenticated: a valid key is proof enough that keys are on.
        keys_required = keys.any_active()
    except redis.RedisError as exc:
        log.error("API key check failed: %s", exc)
        raise ServiceUnavailable("cannot check API keys right now; try again") from None
    if not keys_required:
        g.owner = ""
        return
    raise Unauthorized(_why(header))


def _owner_from(header: str, keys: ApiKeyStore) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    key = keys.authenticate(token.strip())
    return None if key is None else key.id


def _why(header: str | None) -> str:
    """The reason a request was refused, precise enough to fix the client, revealing nothing."""
    if header is None:
        return "this API requires an API key: send 'Authorization: Bearer <key>'"
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "malformed Authorization header: expected 'Bearer <key>'"
    if parse_key(token.strip()) is None:
        return "malformed API key: keys look like iq_<id>_<secret>"
    return "unknown or revoked API key"
