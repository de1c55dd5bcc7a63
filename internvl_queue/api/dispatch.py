"""Hand a stored job to the GPU workers: a Celery message that carries only the job id."""

from __future__ import annotations

from typing import Protocol

from ..core.settings import Settings
from ..queue import RUN_JOB_TASK, create_celery

__all__ = ["CeleryDispatcher", "Dispatcher"]


class Dispatcher(Protocol):
    def dispatch(self, job_id: str) -> None: ...


class CeleryDispatcher:
    def __init__(self, settings: Settings) -> None:
        self.celery = create_celery(settings)
        self.queue = settings.queue_name

    def dispatch(self, job_id: str) -> None:
        # Our own job id doubles as the Celery task id, so broker logs and job records line up.
        self.celery.send_task(RUN_JOB_TASK, args=[job_id], task_id=job_id, queue=self.queue)
