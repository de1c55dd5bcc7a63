"""Contract test of ``broker_layout`` with the installed kombu: a real Celery app (the service's
own configuration) publishes to a real Redis, a consumer takes the message and leaves it unacked,
and the module must read back what kombu wrote. If a kombu upgrade moves or reshapes its keys,
this fails here, naming what changed, instead of the reapers silently finding nothing."""

from __future__ import annotations

import time

import kombu
import redis
from celery import Celery

from internvl_queue import broker_layout as broker
from internvl_queue.core.settings import Settings
from internvl_queue.queue import RUN_JOB_TASK, create_celery, send_run_job

QUEUE = "contract-test"


def _celery(client: redis.Redis) -> Celery:
    """The service's own Celery configuration, on the test's Redis."""
    kwargs = client.connection_pool.connection_kwargs
    url = f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
    return create_celery(Settings(redis_url=url))


def test_kombu_redis_layout_is_what_broker_layout_reads(redis_client: redis.Redis) -> None:
    app = _celery(redis_client)
    job_id = "0123456789abcdef0123456789abcdef"
    send_run_job(app, job_id, QUEUE)

    # Waiting: a list named after the queue, whose envelope names the task and its id.
    assert broker.queue_length(redis_client, QUEUE) == 1, (
        f"kombu {kombu.__version__} no longer keeps a queue's messages in a list named after it: "
        f"keys now {sorted(redis_client.keys())}"
    )
    [waiting] = broker.waiting_envelopes(redis_client, QUEUE)
    assert broker.task_of(waiting) == (RUN_JOB_TASK, job_id), waiting

    # Taken and not acked: in ``unacked`` (the envelope) and ``unacked_index`` (when delivered).
    before = time.time()
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        message = channel.basic_get(QUEUE, no_ack=False)
        assert message is not None
        tag = str(message.delivery_tag)
        assert broker.queue_length(redis_client, QUEUE) == 0
        taken = broker.unacked_delivered_before(redis_client, time.time() + 1)
        assert [t.decode() for t, _ in taken] == [tag], (
            f"kombu {kombu.__version__} changed its unacked index ({broker.UNACKED_INDEX!r}): "
            f"keys now {sorted(redis_client.keys())}"
        )
        [(_, delivered_at)] = taken
        assert before - 1 <= delivered_at <= time.time() + 1  # epoch seconds
        assert broker.unacked_delivered_at(redis_client, [tag, "no-such-tag"]) == [
            delivered_at,
            None,
        ]
        [held] = broker.unacked_envelopes(redis_client, [tag])
        assert broker.task_of(held) == (RUN_JOB_TASK, job_id), (
            f"kombu {kombu.__version__} changed its unacked entries ({broker.UNACKED!r}): {held}"
        )
        assert [broker.task_of(e) for e in broker.unacked_envelopes(redis_client)] == [
            (RUN_JOB_TASK, job_id)
        ]

        # An ack removes both; so does forget_unacked, once, and kombu's later ack is harmless.
        assert broker.forget_unacked(redis_client, tag)
        assert not broker.forget_unacked(redis_client, tag)
        assert broker.unacked_delivered_before(redis_client, time.time() + 1) == []
        message.ack()
        channel.basic_recover(requeue=True)  # nothing left to restore
    assert broker.queue_length(redis_client, QUEUE) == 0
    assert broker.unacked_envelopes(redis_client) == []


def test_an_acked_message_leaves_nothing_unacked(redis_client: redis.Redis) -> None:
    app = _celery(redis_client)
    send_run_job(app, "fedcba9876543210fedcba9876543210", QUEUE)
    with app.connection_for_read() as connection:
        message = connection.default_channel.basic_get(QUEUE, no_ack=False)
        assert message is not None
        assert len(broker.unacked_envelopes(redis_client)) == 1
        message.ack()
    assert broker.unacked_envelopes(redis_client) == []
    assert broker.unacked_delivered_before(redis_client, time.time() + 1) == []
