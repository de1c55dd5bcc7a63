"""Every Redis key this project writes, in one place."""

from __future__ import annotations

__all__ = ["PREFIX", "images_key", "job_key", "worker_key", "workers_key"]

PREFIX = "iq"


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def images_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:images"


def workers_key() -> str:
    return f"{PREFIX}:workers"


def worker_key(name: str) -> str:
    return f"{PREFIX}:worker:{name}"
