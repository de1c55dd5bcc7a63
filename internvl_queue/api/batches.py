"""``/v1/batches``: submit many jobs at once, read the batch, stream its results, cancel it.

Every line is validated up front by the code that validates ``POST /v1/jobs`` (the JSON body's
parser, then ``prepare_job``), so a line means exactly what the same body sent alone would mean.
Valid lines become ordinary jobs of the caller's, stored in chunked transactions and dispatched
through one broker connection; invalid ones are reported by line. Like jobs, another key's batch
answers 404, exactly like an unknown one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from math import ceil
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request

from ..core.batches import (
    STORING_LEASE_S,
    Batch,
    BatchFence,
    BatchStore,
    LineError,
    StorerSuperseded,
    is_job_id,
)
from ..core.durability import NotDurable
from ..core.errors import (
    Conflict,
    JobNotFound,
    ServiceError,
    ServiceUnavailable,
    ValidationFailed,
)
from ..core.idempotency import KeyAlreadyBound, KeyClaim, body_fingerprint, check_key
from ..core.image_budget import ImageBudget
from ..core.job import Job, new_job_id
from ..core.keys import dispatching_key, job_key
from ..core.priority import Priority, parse_priority
from ..core.submission import check_metadata, check_webhook_target, prepare_job
from .auth import current_owner
from .batch_body import BatchBody, read_batch_body
from .errors import redis_outage
from .fault_hook import jobs_per_transaction, kill_api_at
from .parsing import submission_from_object
from .services import Services, services

__all__ = ["BATCHES_PATH", "BATCH_DEFAULT_PRIORITY", "batches"]

log = logging.getLogger(__name__)

BATCHES_PATH = "/v1/batches"
batches = Blueprint("batches", __name__, url_prefix=BATCHES_PATH)

# The lane a batch's jobs run in unless a line names one: a batch is bulk work, and must not
# delay interactive jobs. Set on every line that has no ``priority``; the JSON parser passes it
# on once jobs have priorities (until then it ignores the field, like any unknown one).
BATCH_DEFAULT_PRIORITY = "low"
# The longest custom_id accepted.
MAX_CUSTOM_ID_CHARS = 256
# Seconds a caller refused for a full queue is asked to wait before trying again.
QUEUE_FULL_RETRY_AFTER_S = 10
# Job records read per round trip while streaming results or canceling.
_CHUNK = 1000


@batches.post("")
def submit() -> tuple[Response, int, dict[str, str]]:
    svc = services()
    owner = current_owner()
    svc.rate_limiter.check(owner)
    request.max_content_length = svc.settings.max_batch_request_bytes
    key = request.headers.get("Idempotency-Key")
    fingerprint = ""
    if key is not None:
        check_key(key)
        # Read before the body is parsed (which reads the request's cache, if any); only the
        # digest outlives the request.
        raw = request.get_data(cache=True)
        fingerprint = body_fingerprint(request.mimetype, request.query_string, raw)
    body = read_batch_body(request, svc.settings.max_batch_requests)
    webhook_url = check_webhook_target(body.webhook_url, svc.settings)
    metadata = check_metadata(body.metadata)
    claim: KeyClaim | None = None
    if key is not None:
        if (replay := _replay(svc, owner, key, fingerprint, body)) is not None:
            return replay
        claim = svc.idempotency.claim_batch(owner, key, fingerprint)
    batch_id = new_job_id()
    accepted, entries, errors = _validate(svc, body, owner, batch_id)
    if errors and body.all_or_nothing:
        return (
            jsonify(
                {
                    "error": {
                        "code": "batch_invalid",
                        "message": f"{len(errors)} of {len(body.lines)} lines are invalid and "
                        "all_or_nothing is set: nothing was submitted; fix the lines listed in "
                        "'errors'",
                    },
                    "errors": [e.to_dict() for e in errors],
                }
            ),
            422,
            {},
        )
    batch = Batch.new(
        owner,
        batch_id=batch_id,
        total=len(body.lines),
        jobs=len(accepted),
        errors=errors,
        webhook_url=webhook_url,
        metadata=metadata,
    )
    try:
        batch = _accept(svc, batch, accepted, entries, claim)
    except KeyAlreadyBound:  # a request with the same key got there first: answer as a retry
        if (replay := _replay(svc, owner, key or "", fingerprint, body)) is not None:
            return replay
        raise ServiceUnavailable(
            "the Idempotency-Key's batch expired while it was read; try again"
        ) from None
    kill_api_at("batch-before-reply")
    return jsonify(batch.to_public()), 202, {"Location": f"{BATCHES_PATH}/{batch.id}"}


def _replay(
    svc: Services, owner: str, key: str, fingerprint: str, body: BatchBody
) -> tuple[Response, int, dict[str, str]] | None:
    """The answer to a retry of the batch ``key`` is bound to, or None if it is bound to none
    that still exists. A retry whose first request died while storing the batch finishes
    storing it (its jobs under the ids already listed), so that every line runs once."""
    bound = svc.idempotency.lookup_batch(owner, key)
    if bound is None:
        return None
    store = _batch_store(svc)
    # Read as stored: a read that settles an abandoned batch would cut it short, and this
    # retry is the one request that can store what it lacks.
    batch = store.get(bound.job_id, settle=False)
    if batch is None:  # expired: the key is free again
        return None
    if bound.fingerprint != fingerprint:
        raise ValidationFailed(
            "this Idempotency-Key was already used for a different batch; send a new request "
            "with a new key",
            code="idempotency_key_reused",
        )
    if batch.storing_until is not None and not batch.stored_status.is_terminal:
        resumed = _resume(svc, batch, body) if batch.is_abandoned(time.time()) else None
        if resumed is None and (batch := store.get(batch.id) or batch).storing_until is not None:
            raise Conflict(
                f"batch {batch.id} is still being stored by the first request with this "
                "Idempotency-Key; send it again with the same key in a few seconds",
                code="batch_storing",
                retry_after=ceil(STORING_LEASE_S),
            )
        batch = resumed or batch
    else:
        try:  # a retry after 503 not_durable: answered 202 only once replicas hold it
            svc.store.confirm_durable()
        except NotDurable as short:
            _durable(batch, short)
        except redis.RedisError as exc:
            redis_outage().failed(exc, "confirming a batch on the replicas")
            raise ServiceUnavailable("the job store is unavailable; try again") from None
    headers = {"Idempotency-Replayed": "true", "Location": f"{BATCHES_PATH}/{batch.id}"}
    return jsonify(batch.to_public()), 202, headers


def _resume(svc: Services, abandoned: Batch, body: BatchBody) -> Batch | None:
    """Store the jobs a dead request listed but did not store (this request has the same body,
    validated again), send their messages, and finish storing the batch; None if another
    request took it over first."""
    store = _batch_store(svc)
    # Validated before the lease is taken: fetching a big batch's image URLs again may take
    # longer than a lease.
    accepted, _, errors = _validate(svc, body, abandoned.owner, abandoned.id)
    if (taken := store.take_over(abandoned.id)) is None:
        return None
    batch, fence = taken
    listed: list[str] = []
    while entries := store.lines(batch.id, len(listed), _CHUNK):
        listed.extend(entries)
    fresh = {job.custom_id: (job, images) for job, images in accepted}
    refused = {error.line: error for error in errors}
    missing: list[tuple[Job, list[bytes]]] = []
    dropped: dict[int, LineError] = {}
    job_ids = [(index, entry) for index, entry in enumerate(listed) if is_job_id(entry)]
    # Chunks commit in line order: the first ``stored`` jobs listed exist, the others do not.
    for index, job_id in job_ids[batch.stored :]:
        number, line = body.lines[index]
        custom_id = line.get("custom_id") if isinstance(line, dict) else None
        if (found := fresh.get(custom_id) if isinstance(custom_id, str) else None) is None:
            # Valid for the dead request, not now (an image URL that no longer answers): the
            # line is reported invalid, with why.
            dropped[index] = refused[number]
            continue
        job, images = found
        missing.append((replace(job, id=job_id), images))
    log.warning("batch %s: resuming, %d jobs left to store", batch.id, len(missing))
    short = _store_and_dispatch(svc, batch, missing, fence)
    return _durable(_finish_storing(svc, batch, fence, dropped), short)


def _validate(
    svc: Services, body: BatchBody, owner: str, batch_id: str
) -> tuple[list[tuple[Job, list[bytes]]], list[str], list[LineError]]:
    """The lines' jobs (with their images), the lines list (a job id or an error each), and the
    errors."""
    accepted: list[tuple[Job, list[bytes]]] = []
    entries: list[str] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    for number, line in body.lines:
        try:
            job, images = _line_job(svc, number, line, owner, batch_id, seen)
        except _LineRefused as refused:
            errors.append(refused.error)
            entries.append(json.dumps(refused.error.to_dict()))
            continue
        accepted.append((job, images))
        entries.append(job.id)
    return accepted, entries, errors


class _LineRefused(Exception):
    def __init__(self, error: LineError) -> None:
        super().__init__(error.message)
        self.error = error


def _line_job(
    svc: Services, number: int, line: Any, owner: str, batch_id: str, seen: set[str]
) -> tuple[Job, list[bytes]]:
    if isinstance(line, LineError):
        raise _LineRefused(line)
    raw_id = line.get("custom_id") if isinstance(line, dict) else None

    def refuse(message: str, *, code: str) -> _LineRefused:
        custom_id = raw_id if isinstance(raw_id, str) else None
        return _LineRefused(LineError(number, custom_id, code, message))

    if not isinstance(line, dict):
        raise refuse("a line must be a JSON object (a job's request)", code="invalid_json")
    if not isinstance(raw_id, str) or not 1 <= len(raw_id) <= MAX_CUSTOM_ID_CHARS:
        raise refuse(
            f"custom_id must be a string of 1 to {MAX_CUSTOM_ID_CHARS} characters",
            code="invalid_custom_id",
        )
    if raw_id in seen:
        raise refuse(f"custom_id {raw_id!r} is used by an earlier line", code="duplicate_custom_id")
    line = {"priority": BATCH_DEFAULT_PRIORITY, **line}
    try:
        submission = submission_from_object(line, what=f"line {number}")
        if parse_priority(submission.priority) is Priority.HIGH:
            # High jobs are bounded per key (INTERNVL_MAX_HIGH_PER_KEY) one submit at a time;
            # a batch is bulk work by nature.
            raise refuse(
                "a batch's lines run in the normal or low lane: submit high-priority jobs one by "
                "one (POST /v1/jobs)",
                code="invalid_parameter",
            )
        # A line's image URLs are fetched as a job's are (one line after another).
        images = svc.image_fetcher.fetch(
            submission.images,
            max_bytes=svc.settings.max_request_bytes,
            max_images=svc.settings.max_images,
        )
        submission = replace(submission, images=list(images))
        job = prepare_job(submission, svc.settings, owner=owner)
    except ServiceError as exc:
        raise refuse(exc.message, code=exc.code) from None
    seen.add(raw_id)
    return replace(job, batch_id=batch_id, custom_id=raw_id), list(images)


def _accept(
    svc: Services,
    batch: Batch,
    jobs: list[tuple[Job, list[bytes]]],
    entries: list[str],
    key: KeyClaim | None,
) -> Batch:
    """Store the batch (its Idempotency-Key bound to it), then its jobs, then send their
    messages; 503 when the queue is full; ``KeyAlreadyBound`` if another request's batch has
    the key."""
    cap = svc.settings.max_queued_batch_jobs
    size = sum(len(image) for _, images in jobs for image in images)
    budget = ImageBudget(svc.store.redis, svc.settings.max_queued_bytes)
    try:
        # Approximate under concurrent submits (checked, then added), like the job cap.
        if cap and jobs and svc.store.queued_batch_count() + len(jobs) > cap:
            raise ServiceUnavailable(
                f"{svc.store.queued_batch_count()} jobs of batches are already waiting and this "
                f"batch has {len(jobs)}; at most {cap} (INTERNVL_MAX_QUEUED_BATCH_JOBS): try "
                "again later, or send a smaller batch",
                code="queue_full",
                retry_after=QUEUE_FULL_RETRY_AFTER_S,
            )
        if jobs and not budget.has_room(size):
            raise ServiceUnavailable(
                f"the batch's {size} bytes of images do not fit in what is left of "
                f"INTERNVL_MAX_QUEUED_BYTES ({svc.settings.max_queued_bytes} bytes); try again "
                "later, or send a smaller batch",
                code="queue_full",
                retry_after=QUEUE_FULL_RETRY_AFTER_S,
            )
        # The record first: a job that finishes at once must find it to be counted.
        batch, fence = _batch_store(svc).create(batch, entries, key=key)
    except redis.RedisError as exc:
        redis_outage().failed(exc, "storing a batch")
        raise ServiceUnavailable("the job store is unavailable; try again") from None
    kill_api_at("batch-after-record")
    if fence is None:  # no job: stored failed, nothing to store
        return batch
    short = _store_and_dispatch(svc, batch, jobs, fence)
    return _durable(_finish_storing(svc, batch, fence, {}), short)


def _finish_storing(
    svc: Services, batch: Batch, fence: BatchFence, dropped: dict[int, LineError]
) -> Batch:
    try:
        return _batch_store(svc).finish_storing(fence, dropped) or batch
    except StorerSuperseded:
        raise _taken_over(batch) from None
    except redis.RedisError as exc:
        # Every job is stored and will run; the lease runs out and a read or a retry finishes
        # storing it (module doc of core/batches.py).
        redis_outage().failed(exc, "finishing storing a batch")
        raise ServiceUnavailable(
            f"batch {batch.id} is stored, but the job store failed before it was marked so; "
            "send it again with the same Idempotency-Key, or follow it at "
            f"{BATCHES_PATH}/{batch.id}"
        ) from None


def _taken_over(batch: Batch) -> ServiceUnavailable:
    # Presumed dead (no chunk within the lease) and taken over by a retry, which answers.
    return ServiceUnavailable(
        f"storing batch {batch.id} took too long and a retry with the same Idempotency-Key "
        f"took it over; follow it at {BATCHES_PATH}/{batch.id}",
        code="batch_taken_over",
    )


def _store_and_dispatch(
    svc: Services,
    batch: Batch,
    jobs: list[tuple[Job, list[bytes]]],
    fence: BatchFence,
) -> NotDurable | None:
    """Store ``jobs`` of the storing ``batch`` under ``fence``, chunk by chunk, then send their
    messages; what ``NotDurable`` said if too few replicas took them in time."""
    budget = ImageBudget(svc.store.redis, svc.settings.max_queued_bytes)
    short: NotDurable | None = None
    try:
        stored = svc.store.create_many(
            jobs, jobs_per_transaction(), fence=fence, after_chunk=_after_chunk
        )
    except redis.RedisError as exc:
        redis_outage().failed(exc, "storing a batch")
        raise ServiceUnavailable("the job store is unavailable; try again") from None
    except StorerSuperseded:
        raise _taken_over(batch) from None
    except NotDurable as not_yet:
        # Stored on the primary, too few replicas took it in time: it runs, but is not
        # answered 202 (which must survive a failover); 503 below, with the batch's id.
        stored, short = not_yet.stored, not_yet
    kill_api_at("batch-after-store")
    ids = [job.id for job in stored]
    # Accepted from here. Messages not sent now are sent by a reaper (their dispatching entries
    # come due), exactly as for a single job.
    try:
        svc.dispatcher.dispatch_many([(job.id, job.priority) for job in stored])
    except Exception as exc:
        log.error("batch %s: stored; messages not all sent (a reaper will): %s", batch.id, exc)
        return short
    try:
        pipe = svc.store.redis.pipeline(transaction=False)
        for start in range(0, len(ids), _CHUNK):
            pipe.zrem(dispatching_key(), *ids[start : start + _CHUNK])
        pipe.execute()
        budget.add_many({job.id: sum(map(len, images)) for job, images in jobs})
    except redis.RedisError as exc:  # a reaper sends duplicates later: harmless
        log.warning("batch %s: dispatched, but could not record it: %s", batch.id, exc)
    return short


def _after_chunk(index: int) -> None:
    if index == 0:
        kill_api_at("batch-after-first-chunk")


def _durable(batch: Batch, short: NotDurable | None) -> Batch:
    """``batch``, or 503 ``not_durable`` when too few replicas took its jobs in time. The
    message names the batch, which runs: a caller retries with the same Idempotency-Key (202
    once replicas hold it), or follows the batch (without a key a retry submits a second one)."""
    if short is None:
        return batch
    log.warning("batch %s: stored, but not durable yet: %s", batch.id, short)
    raise ServiceUnavailable(
        f"batch {batch.id} was stored and will run, but {short}, so it could be lost if Redis "
        f"failed over now; send it again with the same Idempotency-Key, or follow it at "
        f"{BATCHES_PATH}/{batch.id} (without a key, sending it again submits a second batch)",
        code="not_durable",
        retry_after=1,
    )


@batches.get("/<batch_id>")
def read(batch_id: str) -> Response:
    return jsonify(_own_batch(services(), batch_id).to_public())


@batches.get("/<batch_id>/results")
def results(batch_id: str) -> Response:
    """Every line in input order with its job's status now: a finished line has its result or
    error, a pending one neither. Readable at any time; final once the batch is terminal."""
    svc = services()
    batch = _own_batch(svc, batch_id)
    store = _batch_store(svc)
    return Response(_result_lines(svc, store, batch), mimetype="application/jsonl")


def _result_lines(svc: Services, store: BatchStore, batch: Batch) -> Iterator[str]:
    batch_id = batch.id
    start = 0
    while entries := store.lines(batch_id, start, _CHUNK):
        pipe = svc.store.redis.pipeline(transaction=False)
        jobs = [entry for entry in entries if is_job_id(entry)]
        for job_id in jobs:
            pipe.hmget(job_key(job_id), "status", "custom_id", "result", "error")
        found = dict(zip(jobs, pipe.execute(), strict=True))
        chunk = []
        for offset, entry in enumerate(entries):
            line = _result_line(start + offset + 1, entry, found.get(entry), batch)
            chunk.append(json.dumps(line))
        yield "\n".join(chunk) + "\n"
        start += len(entries)


def _result_line(
    index: int, entry: str, fields: list[bytes | None] | None, batch: Batch
) -> dict[str, Any]:
    if not is_job_id(entry):
        error = json.loads(entry)
        return {
            "index": index,
            "custom_id": error["custom_id"],
            "job_id": None,
            "status": "invalid",
            "result": None,
            "error": {"code": error["code"], "message": error["message"]},
        }
    status, custom_id, result, error = fields or (None, None, None, None)
    if status is None and batch.storing_until is not None:  # being stored: it will be queued
        status = b"queued"
    if status is None and batch.cut_short:
        # Listed, never stored: its request died storing the batch (core/batches.py).
        return {
            "index": index,
            "custom_id": None,
            "job_id": entry,
            "status": "not_stored",
            "result": None,
            "error": {
                "code": "batch_cut_short",
                "message": "the request that submitted the batch died before this line's job "
                "was stored; submit this line again",
            },
        }
    if status is None:  # the job record expired before the batch
        return {
            "index": index,
            "custom_id": None,
            "job_id": entry,
            "status": "expired",
            "result": None,
            "error": {"code": "expired", "message": "the job's record expired"},
        }
    return {
        "index": index,
        "custom_id": (custom_id or b"").decode(),
        "job_id": entry,
        "status": status.decode(),
        "result": json.loads(result or b"null"),
        "error": json.loads(error or b"null"),
    }


@batches.post("/<batch_id>/cancel")
def cancel(batch_id: str) -> tuple[Response, int]:
    """Cancel what has not run: queued jobs end ``canceled`` at once, running ones are asked to
    stop (they may still finish). 202 while some are still running, else 200."""
    svc = services()
    batch = _own_batch(svc, batch_id)
    if batch.status.is_terminal:
        raise Conflict(
            f"the batch already finished ({batch.status.value}); there is nothing to cancel",
            code="batch_already_finished",
        )
    store = _batch_store(svc)
    store.request_cancel(batch_id)
    start = 0
    while entries := store.lines(batch_id, start, _CHUNK):
        jobs = [entry for entry in entries if is_job_id(entry)]
        pipe = svc.store.redis.pipeline(transaction=False)
        for job_id in jobs:
            pipe.hget(job_key(job_id), "status")
        for job_id, status in zip(jobs, pipe.execute(), strict=True):
            if status in (b"queued", b"running"):
                svc.store.cancel(job_id)  # one transaction each: the same as a job's cancel
        start += len(entries)
    now = store.get(batch_id) or batch
    return jsonify(now.to_public()), 200 if now.status.is_terminal else 202


def _batch_store(svc: Services) -> BatchStore:
    return BatchStore(
        svc.store.redis, retention_s=svc.store.retention_s, event_ttl_s=svc.store.event_ttl_s
    )


def _own_batch(svc: Services, batch_id: str) -> Batch:
    batch = _batch_store(svc).get(batch_id)
    if batch is None or batch.owner != current_owner():
        raise JobNotFound(
            f"no batch with id {batch_id!r} (unknown, or expired)", code="batch_not_found"
        )
    return batch
