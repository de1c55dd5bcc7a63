"""Priority lanes: a job's ``priority`` and the broker queue (its lane) its messages go to.

Each queue (``INTERNVL_QUEUE``) has three lanes, three broker lists consumed by its workers in a
fixed order, the highest first (``queue.py``: kombu's ``queue_order_strategy`` ``priority``):
``<queue>.high``, ``<queue>`` (normal: the list older releases used) and ``<queue>.low``. A worker
takes a low job only when the lanes above are empty; within the messages it holds, its engine
forms each batch from the highest priority first (``worker/engine/batching.py``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from .errors import ValidationFailed

__all__ = ["Priority", "lane_queue", "lane_queues", "parse_priority"]


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the highest: sorting by rank puts the most urgent first."""
        return _RANKS[self]


_RANKS = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
_BY_VALUE = {p.value: p for p in Priority}


def lane_queue(queue: str, priority: Priority) -> str:
    """The broker list of ``queue``'s lane for ``priority``. Normal keeps the queue's own name,
    so that messages sent before lanes existed, and senders that know nothing of lanes, are
    served as normal."""
    return queue if priority is Priority.NORMAL else f"{queue}.{priority.value}"


def lane_queues(queue: str) -> tuple[str, ...]:
    """``queue``'s lanes in the order its workers consume them: the highest first."""
    return tuple(lane_queue(queue, p) for p in sorted(Priority, key=lambda p: p.rank))


def parse_priority(raw: Any) -> Priority:
    """A caller's ``priority`` (JSON value or form string); ``normal`` when left out."""
    if raw is None or raw == "":
        return Priority.NORMAL
    if isinstance(raw, str) and raw in _BY_VALUE:
        return _BY_VALUE[raw]
    raise ValidationFailed(
        f"priority must be one of high, normal or low, not {str(raw)[:40]!r}",
        code="invalid_parameter",
    )
