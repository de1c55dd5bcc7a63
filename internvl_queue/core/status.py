"""The job state machine: pure functions, no I/O.

    queued <─> running ──> succeeded
      │           │  └───> failed
      │           └──────> canceled
      ├──> canceled
      └──> failed          (a job that can never run, e.g. its message was retried too often)

``running -> running`` is legal: a message redelivered after a worker died restarts its job.
``running -> queued``: the job's worker lost its lease (it died or stopped renewing); the job waits
for its next delivery.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["IllegalTransition", "JobStatus", "check_transition"]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.QUEUED,
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELED,
        }
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}


class IllegalTransition(Exception):
    """Raised when a job would move between two states that the machine does not connect."""


def check_transition(old: JobStatus, new: JobStatus) -> None:
    if new not in _ALLOWED[old]:
        raise IllegalTransition(f"a job cannot go from {old.value} to {new.value}")
