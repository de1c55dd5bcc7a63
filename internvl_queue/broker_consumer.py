"""The workers' Celery consumer: back within a second or two of Redis, and saying when it is.

After a Redis restart a worker's process, model and heartbeat are back at once, but its Celery
consumer (what takes messages off the broker) reconnects on kombu's schedule: 2, 4, 6 ... up to
30 s between tries, logging an error at each try and nothing when it succeeds. Seen in compose:
the consumer came back 29 s after Redis, while the health check said healthy from 10 s on.

- ``Consumer`` (``worker_consumer`` in ``queue.py``) retries every 1-2 s instead (a refused
  connection costs nothing), and logs one line when an outage starts, not one per try;
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

__all__ = ["RETRY_INTERVAL_MAX_S", "Consumer", "consuming_step"]

log = logging.getLogger("internvl_queue.broker")

# kombu's ensure_connection sleeps start, start+step, ... capped near max: 1, 2, 2, 2 ... s.
_RETRY = {"interval_start": 1.0, "interval_step": 1.0, "interval_max": 1.0}
RETRY_INTERVAL_MAX_S = 2.0


class Consumer(CeleryConsumer):
    """Celery's consumer, with quick reconnection and one log line per outage."""

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
