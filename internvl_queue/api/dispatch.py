"""Hand a stored job to the GPU workers: a Celery message that carries only the job id."""

from __future__ import annotations

from typing import Protocol

from ..core.settings import Settings
from ..queue import create_celery, send_run_job, send_run_jobs

__all__ = ["CeleryDispatcher", "Dispatcher"]


class Dispatcher(Protocol):
    def dispatch(self, job_id: str) -> None: ...

    def dispatch_many(self, job_ids: list[str]) -> None: ...


class CeleryDispatcher:
    def __init__(self, settings: Settings) -> None:
        self.celery = create_celery(settings)
        self.queue = settings.queue_name

    def dispatch(self, job_id: str) -> None:
        send_run_job(self.celery, job_id, self.queue)

    def dispatch_many(self, job_ids: list[str]) -> None:
        send_run_jobs(self.celery, job_ids, self.queue)
