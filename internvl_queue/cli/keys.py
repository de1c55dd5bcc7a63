"""``internvl-queue keys create|list|revoke``: manage API keys straight in the service's Redis.

That Redis is ``REDIS_URL`` if set, else the one a running ``internvl-queue up`` started (see
``local_service``), else the default. There is no HTTP endpoint for this on purpose: whoever can
run this command can reach Redis, and so already holds every key's power; an endpoint would be
one more thing to protect.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TextIO

from redis.sentinel import SentinelConnectionPool

from ..core.apikeys import ApiKey, ApiKeyStore
from ..core.redis_client import connect
from ..core.store import unowned_job_exists
from .local_service import redis_target

__all__ = ["create_key", "format_table", "list_keys", "open_store", "revoke_key", "where"]


def open_store() -> ApiKeyStore:
    """The key store in the service's Redis: ``REDIS_URL``, else the running ``up``'s."""
    return ApiKeyStore(connect(redis_target(), max_connections=2))


def where(store: ApiKeyStore) -> str:
    """The store's Redis as ``host:port/db`` (or a socket path), without any password."""
    pool = store.redis.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        host, port = pool.get_master_address()
        return (
            f"{host}:{port}/{pool.connection_kwargs.get('db', 0)} (primary {pool.service_name!r})"
        )
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def create_key(store: ApiKeyStore, name: str, out: TextIO = sys.stdout) -> int:
    """Print what was made, then the key alone on the last line (``| tail -1`` takes it).

    The first active key closes the open API: jobs submitted while it was open belong to no key
    and answer 404 from then on. That is said on stderr, so that it shows even when stdout is
    captured for the key.
    """
    first = not store.any_active()
    try:
        key, plaintext = store.create(name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if first and unowned_job_exists(store.redis):
        print(
            "warning: this is the first active key, so the API now requires a key; the jobs "
            "submitted while it was open belong to no key and answer 404 from now on (revoke "
            "every key to reach them again)",
            file=sys.stderr,
        )
    print(f"Created API key {key.id} ({key.name!r}).", file=out)
    print("The key is shown once, here, and cannot be recovered: store it now.", file=out)
    print("Send it as: Authorization: Bearer <key>", file=out)
    print(plaintext, file=out)
    return 0


def list_keys(store: ApiKeyStore, out: TextIO = sys.stdout) -> int:
    keys = store.list()
    if not keys:
        print("no API keys: the API is open to anyone (create one to require keys)", file=out)
        return 0
    print(format_table(keys), file=out)
    return 0


def revoke_key(store: ApiKeyStore, key_id: str, out: TextIO = sys.stdout) -> int:
    if store.revoke(key_id):
        print(f"revoked API key {key_id}; requests with it are refused from now on", file=out)
        return 0
    key = store.get(key_id)
    if key is None:
        print(
            f"error: no API key with id {key_id!r} (see: internvl-queue keys list)", file=sys.stderr
        )
        return 1
    print(f"API key {key_id} was already revoked at {_iso(key.revoked_at)}", file=out)
    return 0


def format_table(keys: list[ApiKey]) -> str:
    rows = [("ID", "NAME", "CREATED", "STATUS")]
    for key in keys:
        status = "active" if key.active else f"revoked {_iso(key.revoked_at)}"
        rows.append((key.id, key.name, _iso(key.created_at), status))
    # Pad every column but the last, so no line ends in spaces.
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for *padded, last in rows:
        lines.append("  ".join([*(c.ljust(w) for c, w in zip(padded, widths, strict=True)), last]))
    return "\n".join(lines)


def _iso(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
