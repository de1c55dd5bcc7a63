"""API keys: created by the operator (``internvl-queue keys``), presented as ``Bearer`` tokens.

A key reads ``iq_<id>_<secret>``: ``id`` is 12 random hex characters that name the key (it is
shown by ``keys list``, used to revoke it, and becomes the owner of the jobs it submits); the
secret is ``secrets.token_urlsafe(32)``, 256 random bits. The plaintext is returned once, by
``create``; Redis holds only the SHA-256 of the secret.

Storage: one hash (``api_keys_key``) of key id -> JSON record, plus a set of the ids still active
(``active_api_keys_key``), written in the same transaction as the record, so that "does any
active key exist?" -- asked on every request -- is one ``SCARD`` whatever the number of keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis

from .keys import active_api_keys_key, api_keys_key

__all__ = ["KEY_PREFIX", "ApiKey", "ApiKeyStore", "parse_key"]

KEY_PREFIX = "iq_"
_ID_RE = re.compile(r"[0-9a-f]{12}")
# token_urlsafe(32) gives 43 characters; anything far longer is not one of ours, and is refused
# before it is hashed.
_MAX_SECRET_CHARS = 128
_MAX_NAME_CHARS = 100


@dataclass(frozen=True)
class ApiKey:
    """A key's public record: never its secret, nor the secret's hash."""

    id: str
    name: str
    created_at: float  # Unix time
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def parse_key(presented: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed ``iq_<id>_<secret>``, else None."""
    if not presented.startswith(KEY_PREFIX):
        return None
    # The secret is URL-safe base64 and may itself contain "_", so split at most twice.
    parts = presented.split("_", 2)
    if len(parts) != 3:
        return None
    _, key_id, secret = parts
    if not _ID_RE.fullmatch(key_id) or not 0 < len(secret) <= _MAX_SECRET_CHARS:
        return None
    return key_id, secret


def _hash_secret(secret: str) -> str:
    # A fast hash is right here. Password hashes (bcrypt, scrypt, argon2) are slow on purpose so
    # that guessing a low-entropy human password from a leaked hash is expensive; our secrets are
    # 256 random bits, which no amount of hashing speed makes guessable, and a slow hash would
    # only cost CPU on every request. A leaked hash still cannot be presented as a key.
    return hashlib.sha256(secret.encode()).hexdigest()


def _validate_name(name: str) -> None:
    if not 1 <= len(name) <= _MAX_NAME_CHARS or not name.isprintable() or not name.strip():
        raise ValueError(
            f"a key name must be 1 to {_MAX_NAME_CHARS} printable characters, not all blank"
        )


class ApiKeyStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(self, name: str) -> tuple[ApiKey, str]:
        """A new active key and its plaintext, which is kept nowhere and cannot be shown again."""
        _validate_name(name)
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        key = ApiKey(id=key_id, name=name, created_at=time.time())
        record = {
            "name": key.name,
            "secret_sha256": _hash_secret(secret),
            "created_at": key.created_at,
            "revoked_at": None,
        }
        pipe = self.redis.pipeline(transaction=True)
        # HSETNX: 48 random bits make a collision unlikely, but one must not overwrite a key.
        pipe.hsetnx(api_keys_key(), key_id, json.dumps(record))
        pipe.sadd(active_api_keys_key(), key_id)
        created, _ = pipe.execute()
        if not created:  # pragma: no cover - needs a 48-bit collision
            return self.create(name)
        return key, f"{KEY_PREFIX}{key_id}_{secret}"

    def authenticate(self, presented: str) -> ApiKey | None:
        """The active key ``presented`` names, else None (malformed, unknown, wrong, revoked)."""
        parsed = parse_key(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        # The id is not secret (it is listed, logged, and names the owner of jobs), so answering an
        # unknown id faster than a wrong secret reveals nothing worth hiding.
        raw = self.redis.hget(api_keys_key(), key_id)
        if raw is None:
            return None
        record = _load(raw)
        # Constant time, so response timing does not reveal how much of the hash matched.
        if not hmac.compare_digest(_hash_secret(secret), record["secret_sha256"]):
            return None
        key = _key(key_id, record)
        return key if key.active else None

    def get(self, key_id: str) -> ApiKey | None:
        raw = self.redis.hget(api_keys_key(), key_id)
        return None if raw is None else _key(key_id, _load(raw))

    def list(self) -> list[ApiKey]:
        """Every key, active and revoked, oldest first."""
        records = self.redis.hgetall(api_keys_key())
        keys = [_key(_text(key_id), _load(raw)) for key_id, raw in records.items()]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    def revoke(self, key_id: str) -> bool:
        """Revoke an active key, effective at once. False: no such key, or revoked already."""
        revoked: list[bool] = []

        def revoke_in(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hget(api_keys_key(), key_id)
            record = None if raw is None else _load(raw)
            revoked[:] = [record is not None and record["revoked_at"] is None]
            if record is None or not revoked[0]:
                return
            record["revoked_at"] = time.time()
            pipe.multi()
            pipe.hset(api_keys_key(), key_id, json.dumps(record))
            pipe.srem(active_api_keys_key(), key_id)

        # WATCH the hash: a concurrent revoke of the same key makes this one retry and see it done.
        self.redis.transaction(revoke_in, api_keys_key())
        return revoked[0]

    def any_active(self) -> bool:
        """Whether at least one key is active, i.e. whether the API demands a key (one call)."""
        return bool(self.redis.scard(active_api_keys_key()))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _load(raw: bytes | str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(raw)
    return record


def _key(key_id: str, record: dict[str, Any]) -> ApiKey:
    return ApiKey(
        id=key_id,
        name=record["name"],
        created_at=float(record["created_at"]),
        revoked_at=None if record["revoked_at"] is None else float(record["revoked_at"]),
    )
