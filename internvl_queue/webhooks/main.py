"""Entry module of the webhook worker: ``celery -A internvl_queue.webhooks.main worker``.

Delivers webhook events from the outbox; it has no model and never imports torch, so it is
cheap to run beside (or apart from) the GPU workers, as many as wanted. The outbox pump starts
when the worker is ready to consume and stops at shutdown; events it leased and did not finish
are taken again when their leases run out.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from ..broker_layout import queue_length
from ..core.outage import Outage
from ..core.outbox import Outbox
from ..core.redis_client import connect
from ..core.settings import Settings
from ..queue import DELIVER_WEBHOOK_TASK, create_webhook_celery
from .delivery import WebhookDelivery
from .outbox_pump import OutboxPump

__all__ = ["app", "delivery", "pump"]

log = logging.getLogger("internvl_queue.webhooks")

settings = Settings.from_env()
app = create_webhook_celery(settings)
_redis = connect(settings.redis_target, max_connections=settings.webhook_concurrency + 8)
outbox = Outbox.from_settings(_redis, settings)
# One outage log for the pump and the deliveries: a Redis outage is one line, and one at its end.
_outage = Outage(log, "Redis")
delivery = WebhookDelivery(settings, outbox, outage=_outage)


@app.task(name=DELIVER_WEBHOOK_TASK, ignore_result=True)
def deliver_webhook(event_id: str, lease_token: str) -> None:
    delivery.deliver(event_id, lease_token)  # never raises


def _dispatch(event_id: str, lease_token: str) -> None:
    deliver_webhook.apply_async((event_id, lease_token), queue=settings.webhook_queue)


def _backlog() -> int:
    return queue_length(_redis, settings.webhook_queue)


pump = OutboxPump(
    outbox,
    _dispatch,
    poll_s=settings.webhook_poll_s,
    batch=settings.webhook_concurrency,
    backlog=_backlog,
    outage=_outage,
)


@signals.worker_ready.connect
def _start_pump(**_: Any) -> None:
    if not settings.webhook_secret_list:
        log.error("WEBHOOK_SECRETS is not set: events are kept and retried, never sent unsigned")
    pump.start()
    log.info("webhook worker ready: queue %s", settings.webhook_queue)


@signals.worker_shutdown.connect
def _stop_pump(**_: Any) -> None:
    pump.stop()
