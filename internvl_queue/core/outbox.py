"""The webhook outbox: which events are due, who holds each one, and the log of every attempt.

The job store writes an event (a hash) and its outbox entry (a sorted set scored by when its
next attempt is due) in the same transaction as the job's new state. From there:

1. ``lease_due`` (one Lua script, so atomic) takes the due events, pushes each one's score to
   ``now + lease_s`` and writes a fresh ``lease_token`` into it. Two webhook workers polling
   at once never lease the same event; an event whose worker died becomes due again when its
   lease runs out, and is tried again under the same ``webhook-id`` (at-least-once).
2. Before it sends, the delivery numbers its attempt (``begin_attempt``: the event's ``sent``
   counter, under its lease token), so that the delivery log stays honest when an attempt's
   outcome is never recorded: a receiver that got attempt 1 (its 204 lost with a Redis that died
   that instant) and then the re-send sees the re-send logged as attempt 2, and the missing
   number says an attempt was made whose outcome is unknown.
3. The delivery makes its attempt and calls ``record_attempt`` with its token and number. One
   WATCH/MULTI transaction appends the attempt to the job's delivery log and either reschedules
   the event or finishes it, and only if the token still matches: a delivery whose lease ran out
   (and was taken over) cannot record over the newer one.

A delivery never touches the job record: an unreachable endpoint cannot change a job.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from .job import iso8601
from .job_metrics import stage_webhook_attempt
from .keys import deliveries_key, event_key, outbox_key, webhook_gone_key
from .redis_client import HashFields
from .settings import Settings
from .webhook_events import WebhookEvent

__all__ = ["Attempt", "DeliveryOutcome", "Outbox"]


class DeliveryOutcome(StrEnum):
    DELIVERED = "delivered"  # 2xx: done
    RETRYING = "retrying"  # failed; another attempt is scheduled
    GAVE_UP = "gave_up"  # failed, and the schedule (or the window) is used up
    GONE = "gone"  # 410: the receiver asked us to stop
    REFUSED = "refused"  # the URL now resolves to an address the SSRF guard refuses

    @property
    def is_final(self) -> bool:
        return self is not DeliveryOutcome.RETRYING


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt found, and what happens next."""

    at: float  # when it started (epoch seconds)
    outcome: DeliveryOutcome
    status_code: int | None = None
    error: str | None = None
    duration_ms: float = 0.0
    next_attempt_at: float | None = None  # set exactly when the outcome is RETRYING

    def __post_init__(self) -> None:
        if (self.outcome is DeliveryOutcome.RETRYING) != (self.next_attempt_at is not None):
            raise ValueError("an attempt has a next_attempt_at exactly when it is retrying")


# KEYS[1] outbox; ARGV: now, lease_until, event key prefix, then one fresh token per id taken.
# An id whose hash is gone (expired) or already finished is dropped from the outbox instead.
_LEASE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, #ARGV - 3)
local leased = {}
for i, id in ipairs(ids) do
  local key = ARGV[3] .. id
  local outcome = redis.call('HGET', key, 'outcome')
  if outcome == false or outcome ~= '' then
    redis.call('ZREM', KEYS[1], id)
  else
    local token = ARGV[3 + i]
    redis.call('HSET', key, 'lease_token', token)
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    leased[#leased + 1] = id
    leased[#leased + 1] = token
  end
end
return leased
"""


# KEYS[1] event; ARGV[1] lease token. The attempt's number (1 for the first send), or 0 if the
# lease is no longer the caller's. Never below ``attempts`` + 1 (events staged before ``sent``).
_BEGIN_ATTEMPT = """
if redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[1] then return 0 end
local sent = tonumber(redis.call('HGET', KEYS[1], 'sent') or '0') or 0
local recorded = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') or 0
if sent < recorded then sent = recorded end
redis.call('HSET', KEYS[1], 'sent', sent + 1)
return sent + 1
"""


class Outbox:
    def __init__(self, client: redis.Redis, *, lease_s: float, retention_s: int) -> None:
        self.redis = client
        self.lease_s = lease_s
        # How long the delivery log of a job, and a finished event, are kept after an attempt.
        self.retention_s = retention_s
        self._lease_due = client.register_script(_LEASE_DUE)
        self._begin_attempt = client.register_script(_BEGIN_ATTEMPT)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> Outbox:
        return cls(client, lease_s=settings.webhook_lease_s, retention_s=settings.job_retention_s)

    def lease_due(self, now: float, limit: int) -> list[tuple[str, str]]:
        """Lease up to ``limit`` events due by ``now``: [(event_id, lease_token)], oldest first."""
        if limit < 1:
            return []
        tokens = [uuid.uuid4().hex for _ in range(limit)]
        reply = self._lease_due(
            keys=[outbox_key()], args=[now, now + self.lease_s, event_key(""), *tokens]
        )
        flat = [item.decode() for item in reply]
        return list(zip(flat[::2], flat[1::2], strict=True))

    def load(self, event_id: str) -> WebhookEvent | None:
        raw = self.redis.hgetall(event_key(event_id))
        return WebhookEvent.from_hash(raw) if raw else None  # type: ignore[arg-type]

    def due_at(self, event_id: str) -> float | None:
        """When the event's next attempt (or the end of its lease) is due; None if not pending."""
        score = self.redis.zscore(outbox_key(), event_id)
        return None if score is None else float(score)

    def begin_attempt(self, event_id: str, lease_token: str) -> int:
        """Number the attempt about to be sent (counting every send begun, recorded or not);
        0 if the lease is no longer ``lease_token``'s (send nothing then)."""
        return int(self._begin_attempt(keys=[event_key(event_id)], args=[lease_token]))

    def record_attempt(
        self, event_id: str, lease_token: str, attempt: Attempt, number: int | None = None
    ) -> bool:
        """Log the attempt (as attempt ``number``, from ``begin_attempt``) and reschedule or
        finish the event; False if the lease was lost."""
        key = event_key(event_id)
        recorded = [False]

        def transaction(pipe: redis.client.Pipeline) -> None:
            recorded[0] = False
            raw = pipe.hgetall(key)
            if not raw:
                return  # expired: nothing left to record against
            event = WebhookEvent.from_hash(raw)  # type: ignore[arg-type]
            if event.outcome or event.lease_token != lease_token:
                return  # another delivery took the event over (or finished it) meanwhile
            ttl = int(pipe.ttl(key))
            log = deliveries_key(event.job_id)
            pipe.multi()
            logged = max(number or 0, event.attempts + 1)
            pipe.rpush(log, json.dumps(_entry(event, logged, attempt)))
            pipe.expire(log, self.retention_s)
            # ``attempts`` counts the recorded ones (the retry schedule's step).
            fields: HashFields = {"attempts": str(event.attempts + 1), "lease_token": ""}
            stage_webhook_attempt(pipe, attempt.outcome.value)
            if attempt.outcome is DeliveryOutcome.RETRYING:
                assert attempt.next_attempt_at is not None
                pipe.hset(key, mapping=fields)
                pipe.zadd(outbox_key(), {event_id: attempt.next_attempt_at})
                # The record must outlive its next attempt (and that attempt's lease).
                keep = math.ceil(attempt.next_attempt_at - attempt.at + self.lease_s) + 1
                if 0 <= ttl < keep:
                    pipe.expire(key, keep)
            else:
                pipe.hset(key, mapping={**fields, "outcome": attempt.outcome.value})
                pipe.zrem(outbox_key(), event_id)
                pipe.expire(key, self.retention_s)
                if attempt.outcome is DeliveryOutcome.GONE:
                    pipe.set(webhook_gone_key(event.job_id), event.url, ex=self.retention_s)
            recorded[0] = True

        self.redis.transaction(transaction, key)
        return recorded[0]

    def endpoint_gone(self, job_id: str) -> bool:
        """Whether the job's endpoint answered 410 Gone to one of its events (send no more)."""
        return bool(self.redis.exists(webhook_gone_key(job_id)))

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """Every webhook attempt made for the job, oldest first ([] for none or an unknown job)."""
        raw = self.redis.lrange(deliveries_key(job_id), 0, -1)
        return [json.loads(item) for item in raw]


def _entry(event: WebhookEvent, number: int, attempt: Attempt) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "type": event.type,
        "attempt": number,
        "at": iso8601(attempt.at),
        "url": event.url,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "duration_ms": round(attempt.duration_ms, 1),
        "outcome": attempt.outcome.value,
        "next_attempt_at": iso8601(attempt.next_attempt_at),
    }
