"""The Celery configuration shared by the API (to publish) and the worker (to consume).

Nothing here imports torch: the API builds the same app to send messages.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from celery import Celery, signals
from celery.exceptions import CPendingDeprecationWarning
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from .core.settings import Settings

__all__ = [
    "DELIVER_WEBHOOK_TASK",
    "RUN_JOB_TASK",
    "create_celery",
    "create_webhook_celery",
    "send_run_job",
    "send_run_jobs",
]

RUN_JOB_TASK = "internvl_queue.run_job"
DELIVER_WEBHOOK_TASK = "internvl_queue.deliver_webhook"


def send_run_job(app: Celery, job_id: str, queue: str) -> None:
    """Send a job's broker message. The job id doubles as the Celery task id, so broker logs
    and job records line up (and the reapers find a message's job by it)."""
    app.send_task(RUN_JOB_TASK, args=[job_id], task_id=job_id, queue=queue)


def send_run_jobs(app: Celery, job_ids: list[str], queue: str) -> None:
    """Send many jobs' messages (a batch's) through one producer on one broker connection:
    ``send_run_job`` in a loop would take a connection from the pool for every message."""
    with app.producer_or_acquire() as producer:
        for job_id in job_ids:
            app.send_task(
                RUN_JOB_TASK, args=[job_id], task_id=job_id, queue=queue, producer=producer
            )


# Celery logs two INFO lines per task ("received", "succeeded in"): at GPU rates (150+ jobs/s)
# that is 300 lines/s saying nothing the job record does not. Below DEBUG they are not logged;
# their errors (a task that raised) still are. The workers log a summary a minute instead.
_PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


class _AckLostWithTheBroker(logging.Filter):
    """kombu logs a message it could not ack because the broker went away as CRITICAL, with a
    traceback, once per message in hand when Redis dies. Nothing is lost (the message comes back
    from the broker, and a redelivered task is a no-op), so it becomes one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if (
            isinstance(record.msg, str)
            and record.msg.startswith("Couldn't ack")
            and isinstance(exc, RedisConnectionError | OperationalError | ConnectionError)
        ):
            record.msg, record.args = (
                "could not ack message %r: the broker went away (%s)",
                (
                    record.args[0] if isinstance(record.args, tuple) and record.args else "?",
                    exc,
                ),
            )
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


_ACK_LOST_WITH_THE_BROKER = _AckLostWithTheBroker()  # one instance: addFilter adds it once


@signals.after_setup_logger.connect
def _quiet_worker_logs(loglevel: int = logging.INFO, **_: Any) -> None:
    if loglevel > logging.DEBUG:
        for name in _PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("celery.worker.request").addFilter(_ACK_LOST_WITH_THE_BROKER)
    # Celery warns at every lost connection that a future default will cancel running tasks;
    # ours is set explicitly (False: leases bring back a running job, a cancel could not).
    warnings.filterwarnings(
        "ignore", r"\s*In Celery 5\.1 we introduced", CPendingDeprecationWarning
    )


def create_celery(settings: Settings) -> Celery:
    target = settings.redis_target
    # With sentinels, kombu's sentinel:// transport asks them for the primary at every
    # (re)connect, so the broker follows a failover like our own connections (core/redis_client).
    app = Celery("internvl_queue", broker=target.celery_broker_url(), set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_serializer="json",
        accept_content=["json"],
        # Job state and results live in our own store; Celery keeps none.
        task_ignore_result=True,
        result_backend=None,
        # A message is acked only after its job is stored as finished, so a crash leaves it in
        # the broker; the store makes redelivery idempotent and gives up after max_attempts.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # A worker consumes its queue's lanes (core/priority.py) in the order given, the
            # highest first, at every BRPOP. kombu's default (round_robin) moves the list a
            # message came from to the end: 20 high messages behind 500 low ones were then taken
            # one for one with the low (python -m benchmarks.lane_order).
            "queue_order_strategy": "priority",
            **target.celery_transport_options(),
        },
        broker_connection_retry_on_startup=True,
        # A lost broker is retried for ever (Celery's default gives up after 100 tries and the
        # worker exits): a Redis restart, however long, must never stop a worker.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        # Reconnects every 1-2 s (kombu's schedule grows to 30 s), one log line per outage.
        worker_consumer="internvl_queue.broker_consumer:Consumer",
        # No remote control (``celery inspect`` / ``celery control``): its pidbox consumer is the
        # one that crashes kombu on reconnect after a Redis restart ("'NoneType' object has no
        # attribute 'hostname'"), and Celery then exits with status 0. Workers report themselves
        # through our own registry instead (``/readyz``, WorkerRegistry).
        worker_enable_remote_control=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # The model lives in the worker's own process: no forked pool (CUDA does not survive a
        # fork, and each child would hold a copy of the model). Threads: each job's task prepares
        # its own input, then waits while the one engine thread batches them on the GPU.
        worker_pool="threads",
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def create_webhook_celery(settings: Settings) -> Celery:
    """The webhook worker's app: the same broker, its own queue and a threads pool of its own size.

    Its tasks are acked early: the durable part of a delivery is the event's lease in the outbox,
    not the message. A worker that dies mid-delivery loses the message, and the event's lease
    running out makes the outbox pump dispatch it again; acking late would only add a second,
    redundant redelivery (after the broker's visibility timeout, long after the lease).
    """
    app = create_celery(settings)
    app.conf.update(
        task_default_queue=settings.webhook_queue,
        task_acks_late=False,
        task_reject_on_worker_lost=False,
        worker_concurrency=settings.webhook_concurrency,
    )
    return app
