"""``/v1/jobs``: submit, list, read (optionally waiting), cancel, and a job's webhook deliveries.

Every view acts for the calling API key: another key's job answers 404, exactly like an unknown
one, so ids cannot be probed.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import redis
from flask import Blueprint, Response, jsonify, request

from ..core.durability import NotDurable
from ..core.errors import Conflict, JobNotFound, ServiceUnavailable, ValidationFailed
from ..core.idempotency import (
    KeyAlreadyBound,
    KeyClaim,
    check_key,
    request_fingerprint,
)
from ..core.image_budget import ImageBudget
from ..core.image_urls import ImageUrl
from ..core.job import Job
from ..core.priority_quota import HighPriorityQuota
from ..core.result_cache import answered_from_cache
from ..core.status import JobStatus
from ..core.store import CancelOutcome
from ..core.submission import describe_job, prepare_job
from .auth import current_owner
from .errors import redis_outage
from .fault_hook import kill_api_at
from .listing import list_own_jobs
from .parsing import parse_submission
from .services import Services, services
from .waiting import prefer_wait, prefers_respond_async, query_wait, wait_for_job

__all__ = ["jobs"]

log = logging.getLogger(__name__)

# Seconds a caller waits before retrying a submit the replicas did not confirm in time.
NOT_DURABLE_RETRY_AFTER_S = 1

jobs = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

# Seconds a caller refused for a full queue is asked to wait before trying again.
QUEUE_FULL_RETRY_AFTER_S = 10
# Seconds a long poll answered early (this process holds as many as it may, or is stopping)
# should wait before polling again.
WAITERS_FULL_RETRY_AFTER = "1"

Reply = tuple[Response, int, dict[str, str]]


@jobs.post("")
def submit() -> Response | Reply:
    svc = services()
    owner = current_owner()
    svc.rate_limiter.check(owner)
    sent = parse_submission(request)
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        check_key(key)
        if any(isinstance(image, ImageUrl) for image in sent.images):
            # A retry finds its job before fetching the image URLs again (seconds each, and
            # the caller's servers asked twice): its fingerprint counts URLs, not their bytes.
            fingerprint = request_fingerprint(describe_job(sent, svc.settings), sent.images)
            if (original := _job_bound_to(svc, owner, key, fingerprint)) is not None:
                return _replay(svc, original)
    # Image URLs fetched here, so that the job is stored as if their bytes had been uploaded.
    images = svc.image_fetcher.fetch(
        sent.images,
        max_bytes=svc.settings.max_request_bytes,
        max_images=svc.settings.max_images,
    )
    submission = replace(sent, images=list(images))
    # Validated before the key is read: a refused request holds no key, and the fingerprint is
    # the validated request's (the same request as JSON or as a form matches).
    job = prepare_job(submission, svc.settings, owner=owner)
    if key is None:
        job = _accept(svc, job, images)
    else:
        fingerprint = request_fingerprint(job, sent.images)  # image URLs as sent
        job, replayed = _accept_once(svc, job, images, owner, key, fingerprint)
        if replayed:
            return _replay(svc, job)
    kill_api_at("before-reply")
    return _submitted(svc, job, {})


def _replay(svc: Services, job: Job) -> Reply:
    """A replay answers as the original did (202), whatever the job's state now: the caller
    reads the outcome from the job object or by polling."""
    headers = {"Idempotency-Replayed": "true", "Location": f"/v1/jobs/{job.id}"}
    return _view(svc, job), 202, headers


def _job_bound_to(svc: Services, owner: str, key: str, fingerprint: str) -> Job | None:
    """The existing job ``key`` is bound to by this same request (``fingerprint``), durable on
    the replicas, or None: then the request takes the whole path (``_accept_once``)."""
    bound = svc.idempotency.lookup(owner, key)
    if bound is None or bound.fingerprint != fingerprint:
        return None
    original = svc.store.get(bound.job_id)
    if original is not None:
        _confirm_durable(svc, original)
    return original


def _accept_once(
    svc: Services, job: Job, images: list[bytes], owner: str, key: str, fingerprint: str
) -> tuple[Job, bool]:
    """The job ``key`` is bound to and True (a retry), or ``job`` accepted with ``key`` bound to
    it and False; a 422 if the key is bound to a different request's job."""
    bound = svc.idempotency.lookup(owner, key)
    # A second round is rare, a third rarer: the job a key is bound to may expire between two
    # reads of it (the key is then free again).
    for _ in range(3):
        if bound is not None and (original := svc.store.get(bound.job_id)) is not None:
            if bound.fingerprint != fingerprint:
                raise ValidationFailed(
                    "this Idempotency-Key was already used for a different request; send a "
                    "new request with a new key",
                    code="idempotency_key_reused",
                )
            _confirm_durable(svc, original)
            return original, True
        try:
            claim = svc.idempotency.claim(owner, key, fingerprint)
            return _accept(svc, job, images, claim), False
        except KeyAlreadyBound as taken:  # a request with the same key got there first
            bound = taken.binding
    raise ServiceUnavailable("the Idempotency-Key's job expired while it was read; try again")


def _confirm_durable(svc: Services, original: Job) -> None:
    """A retry after 503 not_durable is answered 202 only once the replicas hold its job."""
    try:
        svc.store.confirm_durable()
    except NotDurable as short:
        raise not_durable(original.id, short) from None
    except redis.RedisError as exc:
        redis_outage().failed(exc, "confirming a job on the replicas")
        raise ServiceUnavailable("the job store is unavailable; try again") from None


def _accept(svc: Services, job: Job, images: list[bytes], key: KeyClaim | None = None) -> Job:
    """Store a validated new job (its Idempotency-Key bound to it in the same transaction) and
    dispatch it; raises a ``ServiceError`` saying why not, or ``KeyAlreadyBound``."""
    cap = svc.settings.max_queued_jobs
    size = sum(len(image) for image in images)
    budget = ImageBudget(svc.store.redis, svc.settings.max_queued_bytes)
    quota = HighPriorityQuota(
        svc.store, svc.settings.max_high_per_key, keep_s=svc.settings.max_timeout_s + 3600
    )
    quota.check(job.owner, job.priority)
    short: NotDurable | None = None
    try:
        # An answer in the result cache needs no queue room and no GPU: stored finished.
        if (answered := answered_from_cache(svc.result_cache, job, svc.settings.model)) is not None:
            return svc.store.create_finished(answered, key=key)
        # Approximate under concurrent submits (checked, then added): a few jobs over is fine.
        # Batches' jobs have a cap of their own (api/batches.py): an overnight batch must not
        # shut the door on single jobs.
        if cap and svc.store.queued_count() - svc.store.queued_batch_count() >= cap:
            raise ServiceUnavailable(
                f"{cap} jobs are already waiting; try again later",
                code="queue_full",
                retry_after=QUEUE_FULL_RETRY_AFTER_S,
            )
        if not budget.has_room(size):
            raise ServiceUnavailable(
                "the queued jobs' images already fill INTERNVL_MAX_QUEUED_BYTES "
                f"({svc.settings.max_queued_bytes} bytes); try again later",
                code="queue_full",
                retry_after=QUEUE_FULL_RETRY_AFTER_S,
            )
        kill_api_at("before-store")
        job = svc.store.create(job, images, key=key)
    except redis.RedisError as exc:
        redis_outage().failed(exc, "storing a job")
        raise ServiceUnavailable("the job store is unavailable; try again") from None
    except NotDurable as not_yet:
        # Stored on the primary, not (yet) on enough replicas: accepted like any job below
        # (dispatched, counted), but not answered 202, which must survive a failover.
        if not_yet.stored.status.is_terminal:  # answered from the cache: nothing to send
            raise not_durable(not_yet.stored.id, not_yet) from None
        job, short = not_yet.stored, not_yet
    kill_api_at("after-store")
    # From here the job is accepted: stored, and bound to its key. Whatever fails now, a reaper
    # sends its message if this process does not say it did (``JobStore.create``); refusing it
    # would make a caller without a key submit it again, and both would run.
    try:
        svc.dispatcher.dispatch(job.id, job.priority)
    except Exception as exc:
        log.error("job %s: stored, but could not send its message (a reaper will): %s", job.id, exc)
    else:
        kill_api_at("after-dispatch")
        try:
            svc.store.dispatched(job.id)
        except redis.RedisError as exc:  # a reaper sends a duplicate message later: harmless
            log.warning("job %s: dispatched, but could not record it: %s", job.id, exc)
    try:
        budget.add(job.id, size)
        quota.add(job.owner, job)
    except redis.RedisError as exc:  # the job is accepted; it merely goes uncounted
        log.warning("could not count job %s in the image byte budget or quota: %s", job.id, exc)
    if short is not None:
        raise not_durable(job.id, short)
    return job


def not_durable(job_id: str, short: NotDurable) -> ServiceUnavailable:
    """503 for a job stored on the primary that too few replicas took in time. It is kept and
    will run: the caller's retry with the same Idempotency-Key finds it (202 once replicas hold
    it); a retry without a key submits a second job."""
    log.warning("job %s: stored, but not durable yet: %s", job_id, short)
    return ServiceUnavailable(
        f"job {job_id} was stored, but {short}, so it could be lost if Redis failed over now; "
        "send the request again with the same Idempotency-Key to get it",
        code="not_durable",
        retry_after=NOT_DURABLE_RETRY_AFTER_S,
    )


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


@jobs.get("")
def list_jobs() -> Response:
    """The caller's own jobs, newest first, a page at a time (``api/listing.py``)."""
    return list_own_jobs()


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
    """The job after a long poll; one that was not waited for in full (this process holds as
    many long polls as it may, or it is stopping) says when to poll again."""
    reply = _view(svc, job)
    if not waited:
        reply.headers["Retry-After"] = WAITERS_FULL_RETRY_AFTER
    return reply


def _view(svc: Services, job: Job) -> Response:
    # One more round trip, only for a job that has a position.
    position = svc.store.queue_position(job) if job.status is JobStatus.QUEUED else None
    return jsonify(job.to_public(queue_position=position))
