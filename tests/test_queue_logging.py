"""The workers' log stays one line per event when Redis goes away under a message being acked."""

from __future__ import annotations

import logging
import warnings

import pytest
from celery.exceptions import CPendingDeprecationWarning
from redis.exceptions import ConnectionError as RedisConnectionError

from internvl_queue.queue import _quiet_worker_logs


def _ack_failure(logger: logging.Logger, exc: BaseException) -> None:
    """What kombu's ``Message.ack_log_error`` does when the ack fails."""
    try:
        raise exc
    except type(exc) as caught:
        logger.critical("Couldn't ack %r, reason:%r", "tag-7", caught, exc_info=True)


def test_an_ack_lost_with_the_broker_is_one_warning_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _quiet_worker_logs(loglevel=logging.INFO)
    logger = logging.getLogger("celery.worker.request")
    with caplog.at_level(logging.INFO, logger="celery.worker.request"):
        _ack_failure(logger, RedisConnectionError("Error 111 connecting to 127.0.0.1:6390."))
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert "tag-7" in record.getMessage() and "broker went away" in record.getMessage()
    assert "Traceback" not in caplog.text


def test_any_other_ack_failure_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    _quiet_worker_logs(loglevel=logging.INFO)
    logger = logging.getLogger("celery.worker.request")
    with caplog.at_level(logging.INFO, logger="celery.worker.request"):
        _ack_failure(logger, ValueError("a bug"))
    [record] = caplog.records
    assert record.levelno == logging.CRITICAL and record.exc_info is not None


def test_celerys_connection_loss_deprecation_warning_is_silenced() -> None:
    with warnings.catch_warnings():
        _quiet_worker_logs(loglevel=logging.INFO)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")  # what a worker runs with
            _quiet_worker_logs(loglevel=logging.INFO)
            warnings.warn(
                "\nIn Celery 5.1 we introduced an optional breaking change which ...",
                CPendingDeprecationWarning,
                stacklevel=1,
            )
            warnings.warn("another pending deprecation", CPendingDeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another pending deprecation"]
