"""Which broker mechanism keeps the lanes' promise: how many low messages a consumer takes before
each high one, with a real Redis and kombu's Redis transport configured as Celery configures it.

    python -m benchmarks.lane_order [--low 500] [--high 20]

``--low`` low messages are sent, then ``--high`` high ones; one consumer (a kombu ``Consumer`` on
the app's connection: the BRPOP loop a Celery worker runs) then takes them all. Three mechanisms:

- ``queues, round_robin``: a queue per lane, kombu's default ``queue_order_strategy``, which moves
  the queue a message came from to the end of the BRPOP key list after each message;
- ``queues, priority``: the same queues, ``queue_order_strategy: priority`` (a fixed order);
- ``message priority``: one queue, Celery's ``priority`` per message (kombu keeps one list per
  priority step, 0 the highest, and BRPOPs them in that order).

Prints, for each, the low messages taken before the first, the median and the last high one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from celery import Celery
from kombu import Consumer, Exchange, Queue

from internvl_queue.cli.redis_server import start_redis
from internvl_queue.core.priority import Priority, lane_queue, lane_queues

BASE = "lanes-bench"


def _measure(url: str, mechanism: str, low: int, high: int) -> list[int]:
    """For each high message in the order taken: how many low ones were taken before it."""
    app = Celery("lanes", broker=url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    if mechanism != "queues, round_robin":
        app.conf.broker_transport_options = {"queue_order_strategy": "priority"}
    by_lane = mechanism != "message priority"
    # Celery's Redis priorities: 0 is the highest (kombu's steps 0, 3, 6, 9).
    numbers = {Priority.HIGH: 0, Priority.LOW: 9}

    def send(priority: Priority, n: int) -> None:
        for i in range(n):
            app.send_task(
                "bench",
                task_id=f"{priority.value}-{i}",
                queue=lane_queue(BASE, priority) if by_lane else BASE,
                priority=None if by_lane else numbers[priority],
            )

    send(Priority.LOW, low)
    send(Priority.HIGH, high)
    names = lane_queues(BASE) if by_lane else (BASE,)
    taken: list[str] = []
    with app.connection_for_read() as conn:
        queues = [Queue(n, Exchange(n), routing_key=n) for n in names]

        def on_message(_body: object, message: object) -> None:
            taken.append(message.headers["id"])  # type: ignore[attr-defined]
            message.ack()  # type: ignore[attr-defined]

        with Consumer(conn, queues=queues, callbacks=[on_message], accept=["json"]):
            while len(taken) < low + high:
                conn.drain_events(timeout=10)
        for name in names:  # leave the Redis empty for the next mechanism
            conn.default_channel.queue_delete(name)
    app.close()
    lows, before = 0, []
    for task_id in taken:
        if task_id.startswith("low"):
            lows += 1
        else:
            before.append(lows)
    return before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low", type=int, default=500)
    parser.add_argument("--high", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp), persistent=False)
        try:
            print(f"{args.low} low messages sent, then {args.high} high ones; low taken before:")
            print(f"{'mechanism':24} {'first high':>10} {'median':>8} {'last high':>10}")
            for mechanism in ("queues, round_robin", "queues, priority", "message priority"):
                before = _measure(server.url, mechanism, args.low, args.high)
                print(
                    f"{mechanism:24} {before[0]:>10} {statistics.median(before):>8g} "
                    f"{before[-1]:>10}"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
