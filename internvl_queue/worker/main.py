"""Entry module of the GPU worker: ``celery -A internvl_queue.worker.main worker``.

Reads the settings from the environment (once), builds the Celery app, registers the task and
the start-up hooks. The model is loaded (and the batching engine started) in ``worker_init``: in
the worker's own process (the pool is ``threads``), before the consumer starts, so no message is
taken before the model is warm. The heartbeat starts first, so ``/readyz`` shows the worker
loading. A model that cannot be loaded stops the worker with one sentence and exit status 1
(and a ``failed`` heartbeat saying why) instead of leaving it consuming. At shutdown the pool
drains first, then the engine stops.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

import redis
from celery import signals
from celery.exceptions import Reject

from ..broker_consumer import consuming_step
from ..core.data_dir import default_data_dir
from ..core.settings import Settings
from ..core.workers import WorkerState
from ..queue import RUN_JOB_TASK, create_celery, send_run_job
from ..reaper import Reaper, ReaperThread
from .answer import WorkerDefunct
from .heartbeat import Heartbeat
from .model_source import ModelUnavailable, resolve_model
from .runtime import WorkerRuntime

__all__ = ["app", "runtime", "stop_now"]

log = logging.getLogger("internvl_queue.worker")

settings = Settings.from_env()
# The engine thread takes the GIL back after every torch call; see Settings.gil_switch_ms.
sys.setswitchinterval(settings.gil_switch_ms / 1000)
app = create_celery(settings)
runtime = WorkerRuntime(settings)
# Test only: fault hooks (see TEST_KILL_MARKER); never set in production.
runtime.test_faults = os.environ.get("INTERNVL_TEST_FAULTS") == "1"
_heartbeat = Heartbeat(runtime)
runtime.consuming = False  # until Celery's consumer takes messages (see _consuming)


def _consuming(connected: bool) -> None:
    """The broker consumer started (or stopped) taking messages: published at once when it
    starts, so that ``healthcheck worker`` turns healthy without waiting for a heartbeat."""
    runtime.consuming = connected
    if connected:
        try:
            runtime.publish_heartbeat()
        except redis.RedisError as exc:
            log.warning("could not publish the heartbeat: %s", exc)


app.steps["consumer"].add(consuming_step(_consuming))


def _dispatch(job_id: str, queue: str) -> None:
    send_run_job(app, job_id, queue)


# Every worker reaps (see reaper.py): the jobs of a dead worker come back within a lease.
_reaper = ReaperThread(
    Reaper(runtime.store, _dispatch, lease_s=settings.lease_s, queue=settings.queue_name),
    settings.heartbeat_interval_s,
)


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> None:
    try:
        runtime.process(job_id)
    except WorkerDefunct as exc:
        # Not the job's fault: back to the queue for another worker (or this one, restarted).
        log.warning("job %s: handed back to the queue (this worker is defunct)", job_id)
        raise Reject(str(exc), requeue=True) from None
    except redis.RedisError as exc:
        # The store could not be read or written: the job's outcome is not stored. Put the
        # message back rather than ack it, so that the job is run again (bounded by
        # max_attempts) instead of staying "running" for ever.
        log.error("job %s: Redis error (%s); message requeued", job_id, exc)
        raise Reject(exc, requeue=True) from exc


def stop_now() -> None:
    """A second stop request: hand back, before the process ends at once, the jobs it runs
    (their leases end) and the messages it took but did not start (the reaper's pass on another
    worker sends them again), so that nothing waits a lease or the visibility timeout."""
    from celery.worker import state

    runtime.hand_back()
    taken = list(state.reserved_requests) + list(state.active_requests)
    tags = {str(r.message.delivery_tag) for r in taken if r.message is not None}
    try:
        returned = _reaper.reaper.return_messages(sorted(tags))
    except redis.RedisError as exc:  # Redis down: the reapers find them a lease later
        log.warning("could not hand the messages back: %s", exc)
    else:
        log.info("handed back %d message(s) this worker had not started", returned)


@signals.worker_init.connect
def _load_model(**_: Any) -> None:
    _heartbeat.start()
    log.info("worker %s: loading %s", runtime.name, settings.model)
    try:
        runtime.on_defunct = _step_aside
        runtime.load(resolve_model(settings.model, default_data_dir()))
        runtime.publish_heartbeat()  # ready at once, not one heartbeat later
        _reaper.start()
    except ModelUnavailable as exc:
        _give_up(str(exc))
    except Exception as exc:
        log.exception("could not load INTERNVL_MODEL=%s", settings.model)
        _give_up(f"could not load INTERNVL_MODEL={settings.model}: {type(exc).__name__}: {exc}")


def _give_up(reason: str) -> None:
    _heartbeat.stop(remove=False)
    try:
        runtime.fail(reason)
    except redis.RedisError as exc:
        log.warning("could not record the failure in Redis: %s", exc)
    log.error("%s", reason)
    # SystemExit passes through Celery's signal dispatch (which swallows Exceptions).
    raise SystemExit(1)


# Exit status of a worker whose engine died (a sticky GPU error, a hang): its supervisor restarts
# it. Past the grace, a shutdown that hangs too (a task stuck in the GPU) is cut short.
EXIT_DEFUNCT = 3
_DEFUNCT_GRACE_S = 30.0


def _step_aside(reason: str) -> None:
    """Stop consuming and exit with EXIT_DEFUNCT, as a warm shutdown: running tasks hand their
    jobs back (``WorkerDefunct`` -> requeued) and reserved messages are restored to the queue."""
    from celery.worker import state

    log.critical("worker %s is defunct and exits: %s", runtime.name, reason)
    state.should_stop = EXIT_DEFUNCT
    timer = threading.Timer(_DEFUNCT_GRACE_S, os._exit, args=(EXIT_DEFUNCT,))
    timer.daemon = True
    timer.start()


@signals.worker_ready.connect
def _announce_ready(**_: Any) -> None:
    log.info("worker %s ready: %s on %s", runtime.name, settings.model, runtime.info().device)


@signals.worker_shutdown.connect
def _stop(**_: Any) -> None:
    _reaper.stop()
    _heartbeat.stop(remove=runtime.state is not WorkerState.DEFUNCT)  # a defunct one stays listed
    runtime.shutdown()
