"""Entry module of the GPU worker: ``celery -A internvl_queue.worker.main worker``.

Reads the settings from the environment (once), builds the Celery app, registers the task and
the start-up hooks. The model is loaded (and the batching engine started) in ``worker_init``: in
the worker's own process (the pool is ``threads``), before the consumer starts, so no message is
taken before the model is warm. A model that fails to load stops the worker with a non-zero exit
instead of leaving it consuming. At shutdown the pool drains first, then the engine stops.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import signals
from celery.exceptions import Reject

from ..core.settings import Settings
from ..queue import RUN_JOB_TASK, create_celery
from .heartbeat import Heartbeat
from .runtime import WorkerRuntime

__all__ = ["app", "runtime"]

log = logging.getLogger("internvl_queue.worker")

settings = Settings.from_env()
app = create_celery(settings)
runtime = WorkerRuntime(settings)
_heartbeat = Heartbeat(runtime)


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> None:
    try:
        runtime.process(job_id)
    except redis.RedisError as exc:
        # The store could not be read or written: the job's outcome is not stored. Put the
        # message back rather than ack it, so that the job is run again (bounded by
        # max_attempts) instead of staying "running" for ever.
        log.error("job %s: Redis error (%s); message requeued", job_id, exc)
        raise Reject(exc, requeue=True) from exc


@signals.worker_init.connect
def _load_model(**_: Any) -> None:
    try:
        runtime.load()
    except Exception as exc:
        log.exception("could not load model %s", settings.model)
        # SystemExit passes through Celery's signal dispatch (which swallows Exceptions).
        raise SystemExit(f"internvl-queue worker: could not load {settings.model}: {exc}") from exc


@signals.worker_ready.connect
def _start_heartbeat(**_: Any) -> None:
    _heartbeat.start()
    log.info("worker %s ready: %s on %s", runtime.name, settings.model, runtime.info().device)


@signals.worker_shutdown.connect
def _stop(**_: Any) -> None:
    _heartbeat.stop()
    runtime.shutdown()
