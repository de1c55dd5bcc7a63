"""``/v1/jobs``: submit, read (optionally waiting), cancel, and the job's webhook deliveries.

Every view acts for the calling API key: another key's job answers 404, exactly like an unknown
one, so ids cannot be probed.
"""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, Response, jsonify, request

from ..core.errors import Conflict, JobNotFound, ServiceUnavailable, ValidationFailed
from ..core.idempotency import ReservationOutcome, check_key
from ..core.image_budget import ImageBudget
from ..core.job import Job
from ..core.status import JobStatus
from ..core.store import CancelOutcome
from ..core.submission import Submission, prepare_job
from .auth import current_owner
from .errors import redis_outage
from .parsing import parse_submission
from .services import Services, services
from .waiting import prefer_wait, prefers_respond_async, query_wait, wait_for_job

__all__ = ["jobs"]

log = logging.getLogger(__name__)

jobs = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

# Seconds a caller refused for a full queue is asked to wait before trying again.
QUEUE_FULL_RETRY_AFTER_S = 10
# Seconds a long poll answered at once (this process holds as many as it may) should wait.
WAITERS_FULL_RETRY_AFTER = "1"

Reply = tuple[Response, int, dict[str, str]]


@jobs.post("")
def submit() -> Response | Reply:
    svc = services()
    owner = current_owner()
    svc.rate_limiter.check(owner)
    submission = parse_submission(request)
    key = request.headers.get("Idempotency-Key")
    if key is None:
        job = _accept(svc, submission, owner)
        return _submitted(svc, job, {})
    check_key(key)
    fingerprint = submission.fingerprint()
    reservation = svc.idempotency.reserve(owner, key, fingerprint)
    if reservation.outcome is ReservationOutcome.MISMATCH:
        raise ValidationFailed(
            "this Idempotency-Key was already used for a different request",
            code="idempotency_key_reused",
        )
    if reservation.outcome is ReservationOutcome.REPLAY:
        assert reservation.job_id is not None
        original = svc.store.get(reservation.job_id)
        if original is not None:
            # A replay answers as the original did (202), whatever the job's state now: the
            # caller reads the outcome from the job object or by polling.
            headers = {"Idempotency-Replayed": "true", "Location": f"/v1/jobs/{original.id}"}
            return _view(svc, original), 202, headers
        # The job expired before its key did: the key is free again.
        svc.idempotency.release(owner, key)
        reservation = svc.idempotency.reserve(owner, key, fingerprint)
    if reservation.outcome is not ReservationOutcome.NEW:
        raise Conflict(
            "a request with this Idempotency-Key is still being processed; retry shortly",
            code="idempotency_key_in_flight",
        )
    try:
        job = _accept(svc, submission, owner)
    except Exception:
        svc.idempotency.release(owner, key)
        raise
    svc.idempotency.complete(owner, key, fingerprint, job.id)
    return _submitted(svc, job, {})


def _accept(svc: Services, submission: Submission, owner: str) -> Job:
    """Validate, store and dispatch a new job; raises a ``ServiceError`` saying why not."""
    job = prepare_job(submission, svc.settings, owner=owner)
    cap = svc.settings.max_queued_jobs
    try:
        # Approximate under concurrent submits (checked, then added): a few jobs over is fine.
        if cap and svc.store.queued_count() >= cap:
            raise ServiceUnavailable(
                f"{cap} jobs are already waiting; try again later",
                code="queue_full",
                retry_after=QUEUE_FULL_RETRY_AFTER_S,
            )
        size = sum(len(image) for image in submission.images)
        budget = ImageBudget(svc.store.redis, svc.settings.max_queued_bytes)
        if not budget.has_room(size):
            raise ServiceUnavailable(
                "the queued jobs' images already fill INTERNVL_MAX_QUEUED_BYTES "
                f"({svc.settings.max_queued_bytes} bytes); try again later",
                code="queue_full",
                retry_after=QUEUE_FULL_RETRY_AFTER_S,
            )
        job = svc.store.create(job, submission.images)
    except redis.RedisError as exc:
        redis_outage().failed(exc, "storing a job")
        raise ServiceUnavailable("the job store is unavailable; try again") from None
    try:
        svc.dispatcher.dispatch(job.id)
    except Exception as exc:  # the broker refused: leave nothing behind
        log.error("could not dispatch job %s: %s", job.id, exc)
        svc.store.discard(job.id)
        raise ServiceUnavailable("the job queue is unavailable; try again") from None
    try:
        svc.store.dispatched(job.id)
    except redis.RedisError as exc:  # a reaper sends a duplicate message later: harmless
        log.warning("job %s: dispatched, but could not record it: %s", job.id, exc)
    try:
        budget.add(job.id, size)  # once dispatched: a discarded job leaves nothing behind
    except redis.RedisError as exc:  # the job is accepted; it merely goes uncounted
        log.warning("could not count job %s in the image byte budget: %s", job.id, exc)
    return job


def _submitted(svc: Services, job: Job, headers: dict[str, str]) -> Response | Reply:
    """202 with the job; 200 with the finished job if ``Prefer: wait`` saw it finish.

    ``Prefer: respond-async`` asks for the 202 at once, whatever ``wait`` says beside it.
    """
    headers = {**headers, "Location": f"/v1/jobs/{job.id}"}
    # A client may send its preferences in several Prefer headers (RFC 7240 section 2).
    prefer = ", ".join(request.headers.getlist("Prefer"))
    if prefers_respond_async(prefer):
        headers["Preference-Applied"] = "respond-async"
        return _view(svc, job), 202, headers
    wait = prefer_wait(prefer)
    if wait <= 0:
        return _view(svc, job), 202, headers

    def render(found: Job, waited: bool) -> Response:
        reply = _polled_view(svc, found, waited)
        reply.status_code = 200 if found.status.is_terminal else 202
        reply.headers.update(headers)
        if waited:
            reply.headers["Preference-Applied"] = f"wait={wait:g}"
        return reply

    return wait_for_job(job, wait, lambda: svc.store.get(job.id), render)


@jobs.get("/<job_id>")
def read(job_id: str) -> Response:
    svc = services()
    wait = query_wait(request.args.get("wait"))
    job = _own_job(svc, job_id)
    if wait > 0 and not job.status.is_terminal:
        return wait_for_job(
            job, wait, lambda: svc.store.get(job_id), lambda f, w: _polled_view(svc, f, w)
        )
    return _view(svc, job)


@jobs.post("/<job_id>/cancel")
def cancel(job_id: str) -> tuple[Response, int]:
    """200 and ``canceled`` for a queued job; 202 for a running one, which its worker stops."""
    svc = services()
    _own_job(svc, job_id)
    outcome, job = svc.store.cancel(job_id)
    if outcome is CancelOutcome.MISSING or job is None:
        raise JobNotFound(f"no job with id {job_id!r} (unknown, or expired)")
    if outcome is CancelOutcome.ALREADY_FINISHED:
        raise Conflict(
            f"the job already finished ({job.status.value}); there is nothing to cancel",
            code="job_already_finished",
        )
    return jsonify(job.to_public()), 200 if outcome is CancelOutcome.CANCELED else 202


@jobs.get("/<job_id>/deliveries")
def deliveries(job_id: str) -> Response:
    """Every webhook attempt made for the job, oldest first."""
    svc = services()
    job = _own_job(svc, job_id)
    return jsonify(
        {
            "job_id": job.id,
            "webhook": job.to_public()["webhook"],
            "deliveries": svc.outbox.deliveries(job.id),
        }
    )


def _own_job(svc: Services, job_id: str) -> Job:
    job = svc.store.get(job_id)
    if job is None or job.owner != current_owner():
        raise JobNotFound(f"no job with id {job_id!r} (unknown, or expired)")
    return job


def _polled_view(svc: Services, job: Job, waited: bool) -> Response:
    """The job after a long poll; one that was not waited for (this process holds as many long
    polls as it may) says when to poll again."""
    reply = _view(svc, job)
    if not waited:
        reply.headers["Retry-After"] = WAITERS_FULL_RETRY_AFTER
    return reply


def _view(svc: Services, job: Job) -> Response:
    # One more round trip, only for a job that has a position.
    position = svc.store.queue_position(job.id) if job.status is JobStatus.QUEUED else None
    return jsonify(job.to_public(queue_position=position))
