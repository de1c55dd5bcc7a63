"""Wait until replicas hold a write before it is acknowledged: Redis ``WAIT`` after ``EXEC``.

Redis replication is asynchronous: a write the primary answered may not have reached a replica
when the primary dies, and is gone once that replica is promoted. ``WAIT n ms`` blocks until
``n`` replicas acknowledged every write *of the connection it runs on* (the replication offset it
waits for is that client's), or ``ms`` passed, and answers how many did. It must therefore run on
the connection that ran ``EXEC``; redis-py gives a pipeline's connection back to the pool right
after ``EXEC``, so ``HeldConnection`` takes one from the pool and runs both the transaction and
the ``WAIT`` on it before handing it back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
from redis.client import Pipeline

__all__ = ["HeldConnection", "NotDurable", "ReplicaWait"]


@dataclass(frozen=True)
class ReplicaWait:
    """How many replicas must hold a write before it counts (0: none, no ``WAIT`` at all)."""

    replicas: int = 0
    timeout_ms: int = 500

    @property
    def enabled(self) -> bool:
        return self.replicas > 0


class NotDurable(Exception):
    """The write is on the primary, but fewer replicas than asked acknowledged it in time."""

    def __init__(self, acked: int, wait: ReplicaWait, stored: Any = None) -> None:
        super().__init__(
            f"{acked} of {wait.replicas} replicas acknowledged the write "
            f"within {wait.timeout_ms} ms"
        )
        self.acked = acked
        self.wait = wait
        self.stored = stored  # what was written (a job, the jobs of a batch): it stays stored


class _OnePool:
    """What a redis-py ``Pipeline`` needs of a pool, handing out one held connection only."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        return self.connection

    def release(self, connection: Any) -> None:
        pass  # the ``HeldConnection`` gives it back, after its WAIT


class HeldConnection:
    """One connection of ``client``'s pool, held for transactions and the ``WAIT`` after them."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.connection: Any = None

    def __enter__(self) -> HeldConnection:
        self.connection = self.client.connection_pool.get_connection()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, redis.RedisError) or not isinstance(exc, Exception | None):
            # A reply may still be on its way (a WAIT cut short): never reuse such a connection.
            # (A refusal raised by the caller's code, e.g. a key already bound, leaves it clean:
            # the pipeline has sent UNWATCH.)
            self.connection.disconnect()
        self.client.connection_pool.release(self.connection)

    def pipeline(self, transaction: bool = True) -> Pipeline:
        pool: Any = _OnePool(self.connection)
        return Pipeline(pool, self.client.response_callbacks, transaction, None)

    def transaction(self, func: Callable[[Pipeline], None], *watches: str) -> list[Any]:
        """``redis.Redis.transaction`` on the held connection (retried while a watch fails)."""
        with self.pipeline() as pipe:
            while True:
                try:
                    if watches:
                        pipe.watch(*watches)
                    func(pipe)
                    replies: list[Any] = pipe.execute()
                    return replies
                except redis.WatchError:
                    continue

    def wait(self, wait: ReplicaWait) -> int:
        """``WAIT``: how many replicas hold every write made so far on this connection."""
        self.connection.send_command("WAIT", wait.replicas, wait.timeout_ms)
        return int(self.connection.read_response())
