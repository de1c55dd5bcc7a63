"""Test only: kill the API process at a chosen step of a submit, as a crash would.

With ``INTERNVL_TEST_FAULTS=1`` in the API's environment, a submit carrying the request header
``X-Test-Fault: kill-api-at=<step>`` SIGKILLs the process handling it when it reaches ``<step>``
(under gunicorn that is the worker process; the master starts another). Without the variable the
header is ignored. Fault tests use it to prove that a retry with the same ``Idempotency-Key``
after a crash at any step finds exactly one job. Never set the variable in production.

Steps, in the order a submit reaches them:

- ``before-store``: the request is parsed and validated; nothing of the job is written.
- ``after-store``: the job and its Idempotency-Key are committed; no broker message is sent.
- ``after-dispatch``: the message is sent; the job is not yet recorded as dispatched, nor
  counted in the image byte budget.
- ``before-reply``: everything is done; the reply is not sent.

A batch submit (``POST /v1/batches``) reaches these instead:

- ``batch-after-record``: the batch record (storing), its lines and its Idempotency-Key are
  committed; none of its jobs is.
- ``batch-after-first-chunk``: the first chunk of its jobs is committed, not the others.
- ``batch-after-store``: every job is committed; no message is sent, storing is not finished.
- ``batch-before-reply``: everything is done; the reply is not sent.

``INTERNVL_TEST_BATCH_JOBS_PER_TRANSACTION`` (with faults on) makes a batch's chunks that small,
so that a test's batch of a dozen lines spans several.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Literal

from flask import request

__all__ = [
    "BATCH_STEPS",
    "FAULT_HEADER",
    "STEPS",
    "BatchStep",
    "SubmitStep",
    "jobs_per_transaction",
    "kill_api_at",
]

log = logging.getLogger(__name__)

FAULT_HEADER = "X-Test-Fault"
SubmitStep = Literal["before-store", "after-store", "after-dispatch", "before-reply"]
STEPS: tuple[SubmitStep, ...] = ("before-store", "after-store", "after-dispatch", "before-reply")
BatchStep = Literal[
    "batch-after-record", "batch-after-first-chunk", "batch-after-store", "batch-before-reply"
]
BATCH_STEPS: tuple[BatchStep, ...] = (
    "batch-after-record",
    "batch-after-first-chunk",
    "batch-after-store",
    "batch-before-reply",
)
# A batch's jobs per transaction (``JobStore.create_many``) outside tests.
JOBS_PER_TRANSACTION = 500


def jobs_per_transaction() -> int:
    if os.environ.get("INTERNVL_TEST_FAULTS") == "1":
        return int(os.environ.get("INTERNVL_TEST_BATCH_JOBS_PER_TRANSACTION", JOBS_PER_TRANSACTION))
    return JOBS_PER_TRANSACTION


def kill_api_at(step: SubmitStep | BatchStep) -> None:
    """SIGKILL this process if fault injection is on and the request asks to die at ``step``."""
    # Read per call (a dictionary lookup): a test may set the variable after this is imported.
    if os.environ.get("INTERNVL_TEST_FAULTS") != "1":
        return
    if request.headers.get(FAULT_HEADER, "").strip() != f"kill-api-at={step}":
        return
    log.warning("test fault: killing API process %d at %s", os.getpid(), step)
    os.kill(os.getpid(), signal.SIGKILL)
