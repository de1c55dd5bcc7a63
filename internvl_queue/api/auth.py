"""Bearer API keys on every ``/v1/`` request; ``/healthz`` and ``/readyz`` stay open.

``INTERNVL_AUTH`` decides what an empty key set means:

- ``required`` (the default): every ``/v1/`` request must carry ``Authorization: Bearer <key>``,
  also while no key exists; then each gets 401 saying how to create one. An empty key set
  after a FLUSHDB, a failover to an empty replica or an eviction never opens the API.
- ``open`` (what ``internvl-queue up`` runs with unless told otherwise, for local development):
  while no active key exists the API runs open, and says so loudly when it starts; as soon as
  one exists (one made a second ago included) keys are required as above.

The authenticated key's id is the request's owner (``current_owner()``), ``""`` when open.

A Redis error fails closed (503): an API that cannot tell whether keys exist must not serve.
"""

from __future__ import annotations

import logging

import redis
from flask import Flask, g, request

from ..core.apikeys import ApiKeyStore, parse_key
from ..core.errors import ServiceUnavailable, Unauthorized
from ..core.settings import AuthMode
from .errors import redis_outage
from .services import services

__all__ = ["auth_state", "current_owner", "register_auth", "warn_if_no_key"]

log = logging.getLogger(__name__)

_PROTECTED_PREFIX = "/v1/"

_OPEN_WARNING = """
**********************************************************************************
*  NO API KEY EXISTS: THE API IS OPEN TO ANYONE WHO CAN REACH IT.
*  This is meant for local development only. Create a key to require one on every
*  /v1/ request (it takes effect at once, no restart needed):
*      internvl-queue keys create --name NAME
**********************************************************************************"""

_NO_KEY_YET = (
    "INTERNVL_AUTH=required and no API key exists yet: every /v1/ request gets 401 until you "
    "create one (internvl-queue keys create --name NAME)"
)


def current_owner() -> str:
    """The id of the API key that made this request; ``""`` when the API runs open."""
    owner: str = g.get("owner", "")
    return owner


def register_auth(app: Flask, *, warn_if_open: bool = True) -> None:
    """Require a key on ``/v1/`` requests; warn now if there is none. Call after the services."""
    if warn_if_open:
        with app.app_context():
            warn_if_no_key(services().api_keys, services().settings.auth)
    app.before_request(_authenticate)


def warn_if_no_key(keys: ApiKeyStore, mode: AuthMode = "open") -> None:
    """Log the open-mode warning (or, keys required, that none exists) if no active key exists."""
    try:
        no_key = not keys.any_active()
    except redis.RedisError as exc:
        log.warning("could not check for API keys (%s); requests fail until Redis answers", exc)
        return
    if no_key:
        log.warning(_OPEN_WARNING if mode == "open" else _NO_KEY_YET)


def auth_state(keys: ApiKeyStore, mode: AuthMode) -> str:
    """What ``/readyz`` says: ``api_keys`` when requests need a key, ``open`` when they do not.

    Raises ``redis.RedisError`` when it cannot tell (only in open mode does it ask Redis)."""
    if mode == "required":
        return "api_keys"
    return "api_keys" if keys.any_active() else "open"


def _authenticate() -> None:
    if not (request.path + "/").startswith(_PROTECTED_PREFIX):
        return
    svc = services()
    keys, mode = svc.api_keys, svc.settings.auth
    header = request.headers.get("Authorization")
    try:
        if header is not None and (key_id := _owner_from(header, keys)) is not None:
            g.owner = key_id
            return
        # Asked only when no key authenticated: a valid key is proof enough that keys are on.
        any_key = keys.any_active()
    except redis.RedisError as exc:
        redis_outage().failed(exc, "checking an API key")
        raise ServiceUnavailable("cannot check API keys right now; try again") from None
    if not any_key and mode == "open":
        g.owner = ""
        return
    if not any_key:
        raise Unauthorized(
            "this API requires an API key and none exists yet: an operator creates one with "
            "'internvl-queue keys create --name NAME' (or runs it with INTERNVL_AUTH=open)"
        )
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
