"""The workers' Celery consumer: back within a second or two of Redis, and saying when it is.

After a Redis restart a worker's process, model and heartbeat are back at once, but its Celery
consumer (what takes messages off the broker) reconnects on kombu's schedule: 2, 4, 6 ... up to
30 s between tries, logging an error at each try and nothing when it succeeds. Seen in compose:
the consumer came back 29 s after Redis, while the health check said healthy from 10 s on.

- ``Consumer`` (``worker_consumer`` in ``queue.py``) retries every 1-2 s instead (a refused
  connection costs nothing), and logs one line when an outage starts, not one per try;
- a message that cannot be acked or rejected because the broker went away no longer holds its
  place in the prefetch window, so the consumer polls, sees the loss and reconnects: see
  ``Consumer.call_soon_ack``;
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
from kombu.transport.virtual.base import QoS as VirtualQoS

__all__ = ["RETRY_INTERVAL_MAX_S", "Consumer", "consuming_step"]

log = logging.getLogger("internvl_queue.broker")

# kombu's ensure_connection sleeps start, start+step, ... capped near max: 1, 2, 2, 2 ... s.
_RETRY = {"interval_start": 1.0, "interval_step": 1.0, "interval_max": 1.0}
RETRY_INTERVAL_MAX_S = 2.0


class Consumer(CeleryConsumer):
    """Celery's consumer, with quick reconnection and one log line per outage."""

    def call_soon_ack(self, p: Any, *args: Any, **kwargs: Any) -> Any:
        """Settle a message (``Message.ack_log_error`` or ``reject_log_error``); if that failed
        because the broker went away, free the message's place in the prefetch window.

        Why: kombu logs and swallows such a failure, and its Redis transport then keeps the
        message counted against the prefetch window (``QoS.ack`` forgets a delivery only after
        the broker answered). A worker whose window was full at the outage (every thread busy,
        as many messages taken as it has threads: the webhook worker under a slow receiver) then
        never polls the broker again, so it never sees the connection is lost and never takes a
        message again, although the broker is back (seen at a Sentinel failover: the webhook
        queue kept its messages until a restart). Freed, the window lets the consumer poll: on a
        dead connection the read fails and the consumer reconnects as at any outage.

        It does not restart the consumer itself (an earlier fix raised here): closing a channel
        hands its unacked messages back to the broker, so a restart forced on a connection that
        still works (a message taken before the last reconnect fails to settle on its dead
        channel) redelivered the jobs running on it, which then counted one more attempt each
        (``too_many_attempts`` under ten Redis crashes). The unsettled message stays in the
        broker's unacked set until the visibility timeout; a task run twice changes nothing (a
        job's stored outcome, a webhook event's lease).
        """
        settle = p
        message = getattr(settle, "__self__", None)

        def settle_or_release(*a: Any, **kw: Any) -> Any:
            settled = settle(*a, **kw)  # logs (and swallows) a lost connection
            if isinstance(message, Message) and not message.acknowledged:
                _release_from_prefetch(message)
            return settled

        return super().call_soon_ack(settle_or_release, *args, **kwargs)

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


def _release_from_prefetch(message: Message) -> None:
    """Forget a delivery in its channel's prefetch count without telling the broker.

    The base class's ``ack`` is the local half of kombu's Redis ``QoS.ack`` (which first removes
    the message from the broker's unacked set: the half that failed)."""
    qos = getattr(getattr(message, "channel", None), "qos", None)
    if isinstance(qos, VirtualQoS):
        VirtualQoS.ack(qos, message.delivery_tag)


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
