"""Hand a stored job to the GPU workers: a Celery message that carries only the job id, sent to
the lane of its priority (``core/priority.py``)."""

from __future__ import annotations

from typing import Protocol

from ..core.priority import Priority, lane_queue
from ..core.settings import Settings
from ..queue import create_celery, send_run_job

__all__ = ["CeleryDispatcher", "Dispatcher"]


class Dispatcher(Protocol):
    def dispatch(self, job_id: str, priority: Priority) -> None: ...


class CeleryDispatcher:
    def __init__(self, settings: Settings) -> None:
        self.celery = create_celery(settings)
        self.queue = settings.queue_name

    def dispatch(self, job_id: str, priority: Priority = Priority.NORMAL) -> None:
        send_run_job(self.celery, job_id, lane_queue(self.queue, priority))
