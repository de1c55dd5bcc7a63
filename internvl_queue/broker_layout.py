"""Everything that knows how kombu's Redis transport lays out Celery's messages in Redis.

kombu keeps this layout private; the reapers read it in place (to find the messages a dead worker
took and never started, and the ones a killed worker lost), and the webhook worker sizes its
backlog from it. Reading it anywhere else is a bug: a kombu upgrade that changes it must break
one module, and ``tests/test_broker_layout.py`` (a real Celery app publishing to a real Redis, a
message taken and left unacked) fails loudly when it does. Checked against kombu 5.x:

- a queue's waiting messages are a list named after the queue, each a JSON envelope whose
  ``headers`` carry Celery's ``task`` name and ``id`` (protocol 2);
- a message delivered to a consumer and not yet acked is in the hash ``unacked`` (delivery tag
  -> JSON ``[envelope, exchange, routing key]``), and in the sorted set ``unacked_index``
  (delivery tag -> when it was delivered, epoch seconds); an ack removes both, and kombu's ack or
  restore of a tag removed by someone else does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import redis

__all__ = [
    "UNACKED",
    "UNACKED_INDEX",
    "forget_unacked",
    "queue_length",
    "task_of",
    "unacked_delivered_at",
    "unacked_delivered_before",
    "unacked_envelopes",
    "waiting_envelopes",
]

UNACKED, UNACKED_INDEX = "unacked", "unacked_index"

Tag = bytes | str


def queue_length(client: redis.Redis, queue: str) -> int:
    """Messages waiting in ``queue`` (not yet delivered to any consumer)."""
    return int(client.llen(queue))


def waiting_envelopes(client: redis.Redis, queue: str) -> list[object]:
    """The envelopes of every message waiting in ``queue`` (read whole: keep it short)."""
    listed: list[bytes] = client.lrange(queue, 0, -1)  # type: ignore[assignment]
    return [_json(raw) for raw in listed]


def unacked_delivered_before(
    client: redis.Redis, moment: float, limit: int = 1000
) -> list[tuple[bytes, float]]:
    """(delivery tag, delivered at) of unacked messages delivered before ``moment``."""
    found: list[tuple[bytes, float]] = client.zrangebyscore(  # type: ignore[assignment]
        UNACKED_INDEX, "-inf", moment, start=0, num=limit, withscores=True
    )
    return found


def unacked_delivered_at(client: redis.Redis, tags: Sequence[Tag]) -> list[float | None]:
    """When each tag's message was delivered; None for a tag that is not unacked."""
    pipe = client.pipeline(transaction=False)
    for tag in tags:
        pipe.zscore(UNACKED_INDEX, tag)
    return [None if at is None else float(at) for at in pipe.execute()]


def unacked_envelopes(client: redis.Redis, tags: Sequence[Tag] | None = None) -> list[object]:
    """The envelopes of the unacked messages ``tags`` (None for a tag that is gone), or of all of
    them when ``tags`` is None."""
    if tags is None:
        raws: list[bytes | None] = client.hvals(UNACKED)  # type: ignore[assignment]
    elif not tags:
        return []
    else:
        raws = client.hmget(UNACKED, list(tags))  # type: ignore[assignment]
    return [_unacked_envelope(raw) for raw in raws]


def forget_unacked(client: redis.Redis, tag: Tag) -> bool:
    """Remove an unacked message (it is neither redelivered nor restored); True for the one
    caller that removed it, when several race."""
    pipe = client.pipeline(transaction=True)
    pipe.zrem(UNACKED_INDEX, tag)
    pipe.hdel(UNACKED, tag)
    removed, _ = pipe.execute()
    return bool(removed)


def task_of(envelope: object) -> tuple[str, str] | None:
    """(task name, task id) of a Celery message envelope (protocol 2); None if it is not one."""
    try:
        headers = envelope["headers"]  # type: ignore[index]
        return str(headers["task"]), str(headers["id"])
    except (LookupError, TypeError):
        return None


def _unacked_envelope(raw: bytes | None) -> object:
    """The envelope of an ``unacked`` entry ([envelope, exchange, routing key]); None if gone."""
    entry = _json(raw)
    try:
        return entry[0]  # type: ignore[index]
    except (LookupError, TypeError):
        return None


def _json(raw: bytes | None) -> object:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
