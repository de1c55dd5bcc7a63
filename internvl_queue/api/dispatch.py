"""Hand a stored job to the GPU workers: a Celery message that carries only the job id, sent to
the lane of its priority (``core/priority.py``)."""

from __future__ import annotations

from typing import Protocol

from ..core.priority import Priority, lane_queue
from ..core.settings import Settings
from ..queue import create_celery, send_run_job, send_run_jobs

__all__ = ["CeleryDispatcher", "Dispatcher"]


class Dispatcher(Protocol):
    def dispatch(self, job_id: str, priority: Priority) -> None: ...

    def dispatch_many(self, jobs: list[tuple[str, Priority]]) -> None: ...


class CeleryDispatcher:
    def __init__(self, settings: Settings) -> None:
        self.celery = create_celery(settings)
        self.queue = settings.queue_name

    def dispatch(self, job_id: str, priority: Priority = Priority.NORMAL) -> None:
        send_run_job(self.celery, job_id, lane_queue(self.queue, priority))

    def dispatch_many(self, jobs: list[tuple[str, Priority]]) -> None:
        """``dispatch`` of each (job id, priority), one producer per lane."""
        by_lane: dict[str, list[str]] = {}
        for job_id, priority in jobs:
            by_lane.setdefault(lane_queue(self.queue, priority), []).append(job_id)
        for lane, job_ids in by_lane.items():
            send_run_jobs(self.celery, job_ids, lane)
