"""Every Redis key and channel this project uses, in one place."""

from __future__ import annotations

__all__ = [
    "PREFIX",
    "active_api_keys_key",
    "api_keys_key",
    "batch_key",
    "batch_lines_key",
    "cancel_channel",
    "deliveries_key",
    "dispatching_key",
    "done_channel",
    "durability_barrier_key",
    "event_key",
    "high_jobs_key",
    "idempotency_key",
    "images_key",
    "job_key",
    "leases_key",
    "metrics_key",
    "outbox_key",
    "owner_jobs_key",
    "queued_batch_key",
    "queued_bytes_key",
    "queued_key",
    "queued_lane_key",
    "rate_key",
    "result_cache_index_key",
    "result_cache_key",
    "unsettled_batches_key",
    "webhook_gone_key",
    "worker_key",
    "workers_key",
]

PREFIX = "iq"


def durability_barrier_key() -> str:
    """A counter written only so that a ``WAIT`` after it covers every earlier write."""
    return f"{PREFIX}:durability-barrier"


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def images_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:images"


def deliveries_key(job_id: str) -> str:
    """A list of every webhook attempt made for the job (JSON entries, oldest first)."""
    return f"{PREFIX}:job:{job_id}:deliveries"


def webhook_gone_key(job_id: str) -> str:
    """Set when the job's webhook endpoint answered 410 Gone: its later events are not sent."""
    return f"{PREFIX}:job:{job_id}:webhook_gone"


def owner_jobs_key(owner: str) -> str:
    """A sorted set of the ids of one API key's jobs (``""``: the open API's), scored by
    submission time: ``GET /v1/jobs`` walks it newest first (see ``core/job_index.py``)."""
    return f"{PREFIX}:owner:{owner or '-'}:jobs"


def queued_key() -> str:
    """A sorted set of queued job ids scored by submission time (positions, the queue cap)."""
    return f"{PREFIX}:queued"


def queued_lane_key(queue: str, priority: str) -> str:
    """A sorted set of one queue's queued jobs of one priority lane, scored by submission time
    (a subset of ``queued_key``): a job's place counts the lanes taken before its own."""
    return f"{PREFIX}:queued:lane:{queue or '-'}:{priority}"


def queued_batch_key() -> str:
    """The queued jobs that belong to a batch (a subset of ``queued_key``, same scores): the
    single-job cap counts the queue without them, and batches have a cap of their own."""
    return f"{PREFIX}:queued:batch"


def batch_key(batch_id: str) -> str:
    """A hash: the batch record and its counters (``core/batches.py``)."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_lines_key(batch_id: str) -> str:
    """A list, one entry per input line in input order: the line's job id, or its error (JSON)."""
    return f"{PREFIX}:batch:{batch_id}:lines"


def unsettled_batches_key() -> str:
    """A sorted set of the ids of batches not yet terminal, scored by when a reaper should next
    look whether one needs settling (``BatchStore.settle_due``)."""
    return f"{PREFIX}:batches:unsettled"


def leases_key() -> str:
    """A sorted set of running job ids scored by when their worker's lease on them ends."""
    return f"{PREFIX}:leases"


def dispatching_key() -> str:
    """A sorted set of queued job ids that need a broker message, scored by when it is due.

    The API sends a new job's message at once and removes the entry; a job put back in the queue
    gets its message from a reaper. An entry still here when due means the sender died in between.
    """
    return f"{PREFIX}:dispatching"


def queued_bytes_key() -> str:
    """A sorted set of job id -> image bytes, for the byte budget of queued images."""
    return f"{PREFIX}:queued:image_bytes"


def done_channel(job_id: str) -> str:
    """Pub/sub channel announcing that the job reached a terminal state (long polls wait on it)."""
    return f"{PREFIX}:done:{job_id}"


def cancel_channel() -> str:
    """Pub/sub channel on which the id of a running job that was asked to cancel is published."""
    return f"{PREFIX}:cancel"


def event_key(event_id: str) -> str:
    return f"{PREFIX}:event:{event_id}"


def metrics_key() -> str:
    """A hash of cluster-wide job counters and histogram buckets (see ``core/job_metrics.py``)."""
    return f"{PREFIX}:metrics"


def outbox_key() -> str:
    """A sorted set of webhook event ids scored by when their next attempt is due."""
    return f"{PREFIX}:outbox"


def api_keys_key() -> str:
    """A hash of API key id -> JSON record (name, hashed secret, created, revoked)."""
    return f"{PREFIX}:apikeys"


def active_api_keys_key() -> str:
    """A set of the ids of keys not revoked: ``SCARD`` answers "is auth on?" in one cheap call."""
    return f"{PREFIX}:apikeys:active"


def idempotency_key(owner: str, key_digest: str) -> str:
    return f"{PREFIX}:idem:{owner or '-'}:{key_digest}"


def rate_key(owner: str, window: int) -> str:
    return f"{PREFIX}:rate:{owner or '-'}:{window}"


def high_jobs_key(owner: str) -> str:
    """A sorted set of the ids of an owner's high-priority jobs, scored by submission time (the
    ones still queued or running count against ``INTERNVL_MAX_HIGH_PER_KEY``)."""
    return f"{PREFIX}:high:{owner or '-'}"


def workers_key() -> str:
    return f"{PREFIX}:workers"


def worker_key(name: str) -> str:
    return f"{PREFIX}:worker:{name}"


def result_cache_key(entry_id: str) -> str:
    """One cached answer (JSON), expiring with the cache's TTL (see ``core/result_cache.py``)."""
    return f"{PREFIX}:result_cache:{entry_id}"


def result_cache_index_key() -> str:
    """A sorted set of cached answers' keys scored by insertion time: the oldest are evicted."""
    return f"{PREFIX}:result_cache_index"
