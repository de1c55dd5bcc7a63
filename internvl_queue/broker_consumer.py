"""The workers' Celery consumer: back within a second or two of Redis, and saying when it is.

After a Redis restart a worker's process, model and heartbeat are back at once, but its Celery
consumer (what takes messages off the broker) reconnects on kombu's schedule: 2, 4, 6 ... up to
30 s between tries, logging an error at each try and nothing when it succeeds. Seen in compose:
the consumer came back 29 s after Redis, while the health check said healthy from 10 s on.

- ``Consumer`` (``worker_consumer`` in ``queue.py``) retries every 1-2 s instead (a refused
  connection costs nothing), and logs one line when an outage starts, not one per try;
- it restarts (reconnects) when a message cannot be acked or rejected because the broker went
  away, as it does when its own read fails: see ``Consumer.call_soon_ack``;
- ``consuming_step(on_change)`` is a bootstep of the consumer's blueprint, started once the task
  consumer is set up (connected, taking messages) and stopped when the consumer restarts on a lost
  connection, or shuts down: ``on_change(True/False)``, which the GPU worker publishes in its
  heartbeat (``consuming``) for ``healthcheck worker``. It logs the outage's end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.message import Message

__all__ = ["RETRY_INTERVAL_MAX_S", "BrokerLostAtAck", "Consumer", "consuming_step"]

log = logging.getLogger("internvl_queue.broker")

# kombu's ensure_connection sleeps start, start+step, ... capped near max: 1, 2, 2, 2 ... s.
_RETRY = {"interval_start": 1.0, "interval_step": 1.0, "interval_max": 1.0}
RETRY_INTERVAL_MAX_S = 2.0


class BrokerLostAtAck(ConnectionError):
    """A message could not be acked (or rejected): its broker connection is gone."""


class Consumer(CeleryConsumer):
    """Celery's consumer, with quick reconnection and one log line per outage."""

    _restarted_for: Any = None  # the connection a failed settle last restarted the consumer for

    def call_soon_ack(self, p: Any, *args: Any, **kwargs: Any) -> Any:
        """Settle a message (``Message.ack_log_error`` or ``reject_log_error``); if that failed
        because the broker went away, restart the consumer on a new connection.

        Why: kombu logs and swallows such a failure, and its Redis transport then keeps the
        message counted against the prefetch window (``QoS.ack`` forgets a delivery only after
        the broker answered). A worker whose window was full at the outage (every thread busy,
        as many messages taken as it has threads: the webhook worker under a slow receiver) then
        never polls the broker again, so it never sees the connection is lost and never takes a
        message again, although the broker is back (seen at a Sentinel failover: the webhook
        queue kept its messages until a restart). Raised in the consumer's event loop, a
        connection error restarts the consumer as a failed read does; the message the broker
        still holds as unacked comes back after the visibility timeout, and a task run twice
        changes nothing (a job's stored outcome, a webhook event's lease).
        """
        settle = p
        message = getattr(settle, "__self__", None)

        def settle_or_reconnect(*a: Any, **kw: Any) -> Any:
            settled = settle(*a, **kw)  # logs (and swallows) a lost connection
            # Once per connection: the event loop's clean-up runs the other settles still
            # queued, and one raising there is logged as an error with its traceback.
            unsettled = isinstance(message, Message) and not message.acknowledged
            if unsettled and self._restarted_for is not self.connection:
                self._restarted_for = self.connection
                tag = getattr(message, "delivery_tag", "?")
                raise BrokerLostAtAck(f"message {tag} could not be acked: the broker went away")
            return settled

        return super().call_soon_ack(settle_or_reconnect, *args, **kwargs)

    def ensure_connected(self, conn: Any) -> Any:
        ensure = conn.ensure_connection
        starting = self.first_connection_attempt
        tries = 0

        def errback(exc: Exception, interval: float) -> None:
            nonlocal tries
            tries += 1
            if tries == 1:
                # At start-up nothing else says so; after a loss Celery's own line ("Connection
                # to broker lost") did, and this adds where and how often.
                log.log(
                    logging.WARNING if starting else logging.INFO,
                    "cannot reach the broker at %s (%s); trying again every %.0f s or so",
                    conn.as_uri(),
                    exc,
                    RETRY_INTERVAL_MAX_S,
                )
            else:
                log.debug("broker still unreachable (try %d): %s", tries, exc)

        def quickly(_errback: Any = None, max_retries: Any = None, **options: Any) -> Any:
            # Celery's errback logs an error at every try: ours logs the first one only.
            return ensure(errback, max_retries, **{**options, **_RETRY})

        conn.ensure_connection = quickly
        return super().ensure_connected(conn)


def consuming_step(on_change: Callable[[bool], None]) -> type[bootsteps.StartStopStep]:
    """A consumer bootstep calling ``on_change(True)`` when the consumer takes messages, and
    ``on_change(False)`` when it stops (a lost broker connection, or shutdown)."""

    class Consuming(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)
        lost_at: float | None = None

        def start(self, parent: Any) -> None:
            on_change(True)
            if Consuming.lost_at is not None:
                away = time.monotonic() - Consuming.lost_at
                log.info("consuming again: the broker connection is back after %.1f s", away)
                Consuming.lost_at = None

        def stop(self, parent: Any) -> None:
            on_change(False)
            if Consuming.lost_at is None:
                Consuming.lost_at = time.monotonic()

        def shutdown(self, parent: Any) -> None:
            on_change(False)

    return Consuming
