"""Idempotency-Key for submits (IETF draft; Stripe's rules): a retried submit finds its job.

A key is bound to the job it created in the same Redis transaction that creates the job
(``JobStore.create`` with a ``KeyClaim``): there is never a job without its key, nor a key
without its job, so a retry after a crash at any point either finds the job or creates the only
one, and nothing has to be reserved (or expire) in between. Two requests racing with one key:
the transaction of one commits, the other's sees the key bound and gets that job instead.

A binding whose job no longer exists (the job's record expired before the key did) is free: a
new request with that key creates a new job. Keys are scoped to the API key that sent them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from .errors import BadRequest
from .image_urls import ImageUrl
from .job import Job
from .keys import idempotency_key
from .priority import Priority

__all__ = [
    "Binding",
    "IdempotencyStore",
    "KeyAlreadyBound",
    "KeyClaim",
    "body_fingerprint",
    "check_key",
    "request_fingerprint",
]

MAX_KEY_CHARS = 255


@dataclass(frozen=True)
class Binding:
    """A key bound to the job it created, and the fingerprint of the request that created it."""

    job_id: str
    fingerprint: str

    def to_json(self) -> str:
        return json.dumps({"job_id": self.job_id, "fingerprint": self.fingerprint})

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Binding | None:
        if raw is None:
            return None
        record = json.loads(raw)
        return cls(job_id=record["job_id"], fingerprint=record["fingerprint"])


@dataclass(frozen=True)
class KeyClaim:
    """A key to bind to a new job in the job's create transaction (``JobStore.create``)."""

    name: str  # the Redis key
    fingerprint: str
    ttl_s: int

    def check_free(self, pipe: redis.client.Pipeline, record_key: Callable[[str], str]) -> None:
        """In a create transaction, before ``multi`` (the key WATCHed): ``KeyAlreadyBound`` when
        the key is bound to a record (``record_key(id)``) that still exists. A request that
        binds the key meanwhile makes EXEC fail, and the transaction runs again and finds it."""
        bound = Binding.from_json(pipe.get(self.name))
        if bound is not None and pipe.exists(record_key(bound.job_id)):
            raise KeyAlreadyBound(bound)

    def stage_binding(self, pipe: redis.client.Pipeline, record_id: str) -> None:
        """In the same transaction, after ``multi``: bind the key to the record it creates."""
        pipe.set(self.name, Binding(record_id, self.fingerprint).to_json(), ex=self.ttl_s)


class KeyAlreadyBound(Exception):
    """The key was bound to another existing job before this request's job could be created."""

    def __init__(self, binding: Binding) -> None:
        super().__init__(f"the key is bound to job {binding.job_id}")
        self.binding = binding


def check_key(key: str) -> str:
    """``key`` if it is a usable Idempotency-Key (1..255 visible ASCII characters)."""
    if not 0 < len(key) <= MAX_KEY_CHARS or not all(33 <= ord(c) <= 126 for c in key):
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters",
            code="invalid_idempotency_key",
        )
    return key


def request_fingerprint(job: Job, images: Sequence[bytes | ImageUrl]) -> str:
    """A digest of a validated request (what the caller asked of the new job, and its images), to
    tell a retried request from a different one under the same key.

    Taken after validation, so the same request in another form (JSON ``2`` or a form's ``"2"``,
    a default written out or left out, events in another order) has the same fingerprint.

    An image named by URL counts as its URL, as the caller sent it, not as the bytes fetched:
    a retry is the same request even if what the URL serves changed in between (a "latest"
    image, a re-encoding CDN), and it must find its job, not be refused as a different one.
    """
    fields = {
        "question": job.question,
        "params": job.params.to_dict(),
        "metadata": job.metadata,
        "webhook_url": job.webhook_url,
        "webhook_events": list(job.webhook_events),
        "images": [_image_print(image) for image in images],
    }
    if job.priority is not Priority.NORMAL:  # left out otherwise: older fingerprints still match
        fields["priority"] = job.priority.value
    canonical = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(canonical).hexdigest()


def body_fingerprint(content_type: str, query: bytes, body: bytes) -> str:
    """A digest of a batch request as sent (its body can be 50 000 lines: hashed, never
    stored). Its options may come in the query string, so that is part of it."""
    digest = hashlib.sha256()
    for part in (content_type.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _image_print(image: bytes | ImageUrl) -> str:
    if isinstance(image, ImageUrl):
        return f"url:{image.url}"
    return hashlib.sha256(image).hexdigest()


class IdempotencyStore:
    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    def lookup(self, owner: str, key: str) -> Binding | None:
        """The job ``owner``'s ``key`` is bound to, if it is bound (that job may have expired)."""
        return Binding.from_json(self.redis.get(self._name(owner, key)))

    def claim(self, owner: str, key: str, fingerprint: str) -> KeyClaim:
        """What ``JobStore.create`` needs to bind ``key`` to the job it creates."""
        return KeyClaim(self._name(owner, key), fingerprint, self.ttl_s)

    def lookup_batch(self, owner: str, key: str) -> Binding | None:
        """The batch ``owner``'s ``key`` is bound to (``Binding.job_id`` holds its id), if any.
        Batches' keys are a scope of their own: one key may name a job and a batch."""
        return Binding.from_json(self.redis.get(self._name(owner, key, scope="batch")))

    def claim_batch(self, owner: str, key: str, fingerprint: str) -> KeyClaim:
        """What ``BatchStore.create`` needs to bind ``key`` to the batch it creates."""
        return KeyClaim(self._name(owner, key, scope="batch"), fingerprint, self.ttl_s)

    @staticmethod
    def _name(owner: str, key: str, *, scope: str = "") -> str:
        # Hashed, so that a caller's key (any printable text) cannot shape our key space.
        digest = hashlib.sha256(key.encode()).hexdigest()
        return idempotency_key(owner, f"{scope}:{digest}" if scope else digest)
