"""``/v1/jobs``: submit a job, read a job."""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, Response, jsonify, request

from ..core.errors import JobNotFound, ServiceUnavailable
from ..core.submission import prepare_job
from .parsing import parse_submission
from .services import services

__all__ = ["jobs"]

log = logging.getLogger(__name__)

jobs = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


@jobs.post("")
def submit() -> tuple[Response, int, dict[str, str]]:
    svc = services()
    submission = parse_submission(request)
    job = prepare_job(submission, svc.settings)
    try:
        job = svc.store.create(job, submission.images)
    except redis.RedisError as exc:
        log.error("could not store job: %s", exc)
        raise ServiceUnavailable("the job store is unavailable; try again") from None
    try:
        svc.dispatcher.dispatch(job.id)
    except Exception as exc:  # the broker refused: leave nothing behind
        log.error("could not dispatch job %s: %s", job.id, exc)
        svc.store.discard(job.id)
        raise ServiceUnavailable("the job queue is unavailable; try again") from None
    return jsonify(job.to_public()), 202, {"Location": f"/v1/jobs/{job.id}"}


@jobs.get("/<job_id>")
def read(job_id: str) -> Response:
    job = services().store.get(job_id)
    if job is None:
        raise JobNotFound(f"no job with id {job_id!r} (unknown, or expired)")
    return jsonify(job.to_public())
