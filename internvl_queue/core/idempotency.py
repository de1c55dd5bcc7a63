"""Idempotency-Key for submits (IETF draft; Stripe's rules): a retried submit finds its job.

A key is reserved with ``SET NX`` before the job is created, then bound to the job's id. Another
request with the same key meets the reservation and gets the original job (same payload), a 422
(different payload) or a 409 (the first request is still being processed). Keys are scoped to the
API key that sent them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum

import redis

from .errors import BadRequest
from .keys import idempotency_key

__all__ = ["IdempotencyStore", "Reservation", "ReservationOutcome", "check_key"]

MAX_KEY_CHARS = 255
# A reservation whose request died (a crashed API process) frees itself after this long, instead
# of answering 409 for the whole retention time.
_IN_FLIGHT_TTL_S = 60


class ReservationOutcome(StrEnum):
    NEW = "new"  # the key is ours: create the job, then ``complete``
    REPLAY = "replay"  # the same payload was accepted before: ``job_id`` is its job
    MISMATCH = "mismatch"  # the key was used for a different payload
    IN_FLIGHT = "in_flight"  # the first request with this key has not finished


@dataclass(frozen=True)
class Reservation:
    outcome: ReservationOutcome
    job_id: str | None = None


def check_key(key: str) -> str:
    """``key`` if it is a usable Idempotency-Key (1..255 visible ASCII characters)."""
    if not 0 < len(key) <= MAX_KEY_CHARS or not all(33 <= ord(c) <= 126 for c in key):
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters",
            code="invalid_idempotency_key",
        )
    return key


class IdempotencyStore:
    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    def reserve(self, owner: str, key: str, fingerprint: str) -> Reservation:
        name = self._name(owner, key)
        mine = json.dumps({"state": "in_flight", "fingerprint": fingerprint})
        for _ in range(3):  # the record may expire between SET NX and GET: try again
            if self.redis.set(name, mine, nx=True, ex=_IN_FLIGHT_TTL_S):
                return Reservation(ReservationOutcome.NEW)
            raw = self.redis.get(name)
            if raw is None:
                continue
            record = json.loads(raw)
            if record["fingerprint"] != fingerprint:
                return Reservation(ReservationOutcome.MISMATCH, record.get("job_id"))
            if record["state"] == "in_flight":
                return Reservation(ReservationOutcome.IN_FLIGHT)
            return Reservation(ReservationOutcome.REPLAY, record["job_id"])
        return Reservation(ReservationOutcome.IN_FLIGHT)

    def complete(self, owner: str, key: str, fingerprint: str, job_id: str) -> None:
        """Bind the key to the job it created, for the whole retention time."""
        record = {"state": "done", "fingerprint": fingerprint, "job_id": job_id}
        self.redis.set(self._name(owner, key), json.dumps(record), ex=self.ttl_s)

    def release(self, owner: str, key: str) -> None:
        """Forget a reservation whose request created no job (it was refused), so a corrected
        retry under the same key is not held to the refused payload."""
        self.redis.delete(self._name(owner, key))

    @staticmethod
    def _name(owner: str, key: str) -> str:
        # Hashed, so that a caller's key (any printable text) cannot shape our key space.
        return idempotency_key(owner, hashlib.sha256(key.encode()).hexdigest())
