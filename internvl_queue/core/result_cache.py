"""The result cache: a finished job's answer, given again to an identical later job without the GPU.

An entry is keyed by what decides an answer under greedy decoding: the model, the images' bytes
(SHA-256 of each, in order), the question, and the decoding params that change the answer
(``ANSWER_PARAMS``). ``timeout_s``, metadata and the webhook change when or where an answer goes,
not what it is, so they are left out.

1. The API takes the job's *cache digest* at submit (``digest``) and stores it in the job record;
   "" means the job is not cached (the caller sent ``cache: false``, the cache is off, or the
   params are not deterministic).
2. Before it queues a job with a digest, the API looks up (its model, the digest) (``get``). On a
   hit it stores the job already ``succeeded`` (``JobStore.create_finished``): no worker sees it.
3. A worker that stores a succeeded job with a digest puts the answer under (its model, the
   digest) (``put``): one Lua script sets the entry with the TTL, adds it to an index sorted by
   insertion time and deletes the oldest entries beyond ``max_entries``, so the cache is bounded
   in entries whatever the TTL.

The model in the key is the worker's ``INTERNVL_MODEL`` when it writes, and the API's when it
reads: the two must name the model in the same words for a hit (the compose file gives both the
same variable).

Scope: the digest holds the caller's API key unless ``INTERNVL_RESULT_CACHE_SHARED`` is on. An
answer to the same images and question is the same for everyone, but a hit (``cached: true``, and
its speed) tells a caller that someone asked exactly this before: across tenants that is a side
channel on another key's traffic. Scoped by default; an operator who runs one tenant can share.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import redis

from .job import Job, JobParams
from .keys import result_cache_index_key, result_cache_key
from .settings import Settings
from .status import JobStatus

__all__ = [
    "ANSWER_PARAMS",
    "DELIVERY_PARAMS",
    "ResultCache",
    "answered_from_cache",
    "cached_result",
    "digest",
    "is_deterministic",
]

# Every JobParams field is one or the other, so that a new one cannot be left out of the key by
# mistake (checked below, at import): ANSWER_PARAMS change the answer and are part of the key;
# DELIVERY_PARAMS change only when or how it is delivered.
ANSWER_PARAMS = ("max_new_tokens", "max_tiles")
DELIVERY_PARAMS = ("timeout_s",)
_unplaced = {f.name for f in fields(JobParams)} - set(ANSWER_PARAMS) - set(DELIVERY_PARAMS)
if _unplaced:  # pragma: no cover (fails at import, in every test, the day a field is added)
    raise RuntimeError(
        f"JobParams field(s) {sorted(_unplaced)} are neither ANSWER_PARAMS nor DELIVERY_PARAMS "
        "in core/result_cache.py: say whether they change the answer"
    )

# Part of every digest: a change in what goes into it (or in how answers are made) makes
# old entries unreachable instead of wrong.
_DIGEST_VERSION = "1"

# The fields of a result that describe the answer itself; timings and the batch belong to the run
# that made it and are not replayed.
_ANSWER_FIELDS = ("answer", "model", "usage")


def is_deterministic(params: JobParams) -> bool:
    """Whether a job with ``params`` always gets the same answer, and so may be cached.

    Every job decodes greedily today (``do_sample`` is off in the engine), so this is True. A
    sampling parameter added to JobParams (temperature, top_p, seed...) must make it False when it
    asks for sampling: such a job must neither read nor write the cache.
    """
    del params  # greedy decoding: nothing in JobParams can ask for sampling yet
    return True


def digest(
    images: Sequence[bytes], question: str, params: JobParams, *, scope: str | None
) -> str | None:
    """The cache digest of a job (``scope``: its API key; None when the cache is shared across
    keys); None if its answer must not be cached."""
    if not is_deterministic(params):
        return None
    chosen = params.to_dict()
    canonical = {
        "v": _DIGEST_VERSION,
        "scope": scope,
        "question": question,
        "params": {name: chosen[name] for name in ANSWER_PARAMS},
        "images": [hashlib.sha256(data).hexdigest() for data in images],
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _entry_id(model: str, job_digest: str) -> str:
    # Hashed with the model, so that a model id (any text: a path, a hub id) cannot shape the key.
    return hashlib.sha256(f"{model}\0{job_digest}".encode()).hexdigest()


# KEYS[1] the entry, KEYS[2] the index; ARGV: entry JSON, TTL (s), now, most entries kept.
# Index members are entry key names scored by insertion time; members older than the TTL name
# keys that have expired already. Returns how many entries were evicted.
_PUT = """
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - ttl)
redis.call('EXPIRE', KEYS[2], ttl + 1)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over <= 0 then return 0 end
local oldest = redis.call('ZPOPMIN', KEYS[2], over)
for i = 1, #oldest, 2 do redis.call('DEL', oldest[i]) end
return over
"""


class ResultCache:
    def __init__(self, client: redis.Redis, *, ttl_s: int, max_entries: int) -> None:
        self.client = client
        self.ttl_s = ttl_s  # 0: off (nothing is read or written)
        self.max_entries = max_entries
        self._put = client.register_script(_PUT)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> ResultCache:
        return cls(
            client,
            ttl_s=settings.result_cache_ttl_s,
            max_entries=settings.result_cache_max_entries,
        )

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def get(self, model: str, job_digest: str) -> dict[str, Any] | None:
        """The cached answer fields (answer, model, usage) for ``job_digest`` under ``model``."""
        if not self.enabled or not job_digest:
            return None
        raw = self.client.get(result_cache_key(_entry_id(model, job_digest)))
        if raw is None:
            return None
        entry: dict[str, Any] = json.loads(raw)
        return entry if entry.get("model") == model else None

    def put(self, model: str, job_digest: str, result: dict[str, Any]) -> int:
        """Keep ``result``'s answer for ``job_digest`` under ``model``; how many old entries made
        room for it."""
        if not self.enabled or not job_digest:
            return 0
        entry = {name: result.get(name) for name in _ANSWER_FIELDS} | {"model": model}
        evicted = self._put(
            keys=[result_cache_key(_entry_id(model, job_digest)), result_cache_index_key()],
            args=[json.dumps(entry), self.ttl_s, repr(time.time()), self.max_entries],
        )
        return int(evicted)

    def size(self) -> int:
        """Entries held (some may have just expired)."""
        return int(self.client.zcard(result_cache_index_key()))


def answered_from_cache(cache: ResultCache, job: Job, model: str) -> Job | None:
    """``job`` (new, not yet stored) answered from the cache and ``succeeded``; None on a miss.

    It starts when it was created (it never waits) and finishes now: its ``queued``,
    ``preprocess`` and ``inference`` times are 0 and its ``total`` is what the API spent on it
    since it was created (validation, hashing, the lookup).
    """
    entry = cache.get(model, job.cache_digest)
    if entry is None:
        return None
    now = time.time()
    result = cached_result(entry, total_ms=(now - job.created_at) * 1000)
    running = job.moved_to(JobStatus.RUNNING, started_at=job.created_at)
    return running.moved_to(JobStatus.SUCCEEDED, finished_at=now, result=result)


def cached_result(entry: dict[str, Any], *, total_ms: float) -> dict[str, Any]:
    """The result of a job answered from the cache: the entry's answer, ``cached: true``, no GPU
    batch (``batch_size`` null) and the time the API spent on it (``total``) as its only time."""
    return {
        **entry,
        "cached": True,
        "batch_size": None,
        "timings_ms": {
            "queued": 0.0,
            "preprocess": 0.0,
            "inference": 0.0,
            "total": round(total_ms, 1),
        },
    }
