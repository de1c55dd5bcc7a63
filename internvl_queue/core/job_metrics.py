"""Cluster-wide job counters and histograms, kept in one Redis hash beside the jobs.

A job is counted where its state is stored, inside the same ``MULTI`` (``JobStore.create`` for
a submission, ``JobStore._update`` for the move to a terminal state; ``Outbox.record_attempt``
for a webhook attempt). So a count can never disagree with the records: a redelivered job, or a
delivery whose outcome was discarded because another one owns the job, stores nothing and
counts nothing; a transaction retried after a concurrent write counts once, when it executes.
Every API replica reads the same hash at scrape time (``api/cluster_metrics.py``), whichever
process or host did the work.

The hash (``keys.metrics_key()``) holds plain integers and float sums:

- ``submitted``; ``finished:<status>:<error code>`` (the code empty for ``succeeded``);
- ``hist:<name>:<i>``: observations in bucket ``i`` of ``HISTOGRAMS[name]`` (not cumulative;
  ``i == len(bounds)`` is the ``+Inf`` bucket), ``hist:<name>:sum``, ``hist:<name>:count``;
- ``webhook_attempts:<outcome>``; ``generated_tokens``; ``result_cache_hits`` (jobs answered
  from the result cache).

Nothing here touches job content: no question, answer, owner or key.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import redis

from .job import Job
from .keys import metrics_key
from .status import JobStatus

__all__ = [
    "HISTOGRAMS",
    "Histogram",
    "JobMetrics",
    "read_job_metrics",
    "stage_finished",
    "stage_submitted",
    "stage_webhook_attempt",
]

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Upper bounds of each histogram's buckets. Changing a histogram's bounds makes its stored
# buckets meaningless: give it a new name instead.
HISTOGRAMS: dict[str, tuple[float, ...]] = {
    # Every job that started: from submission to its (last) start.
    "queued_seconds": _SECONDS,
    # Succeeded jobs: decoding and tiling its images; the GPU work of its batch.
    "preprocess_seconds": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    "inference_seconds": _SECONDS,
    # Every finished job, by status: from submission to the stored outcome.
    "total_seconds": _SECONDS,
    # Succeeded jobs: the GPU batch it ran in (jobs), its image tiles, the tokens it generated.
    "batch_size": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    "image_tiles": (1, 2, 4, 7, 13, 26, 52, 104),
    "generated_tokens": (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
}
# The histograms observed for every finished job carry its status as a label.
BY_STATUS = frozenset({"total_seconds"})


def stage_submitted(pipe: redis.client.Pipeline) -> None:
    """Count a stored new job, inside the caller's MULTI."""
    pipe.hincrby(metrics_key(), "submitted", 1)


def stage_finished(pipe: redis.client.Pipeline, job: Job) -> None:
    """Count ``job``, just moved to a terminal state, inside the caller's MULTI."""
    code = "" if job.status is JobStatus.SUCCEEDED else (job.error or {}).get("code", "unknown")
    pipe.hincrby(metrics_key(), f"finished:{job.status.value}:{code}", 1)
    if job.finished_at is not None:
        _observe(pipe, "total_seconds", job.finished_at - job.created_at, job.status.value)
    if job.result is not None and job.result.get("cached"):
        # Answered from the result cache at submit: it never queued nor reached a GPU, so it
        # leaves the queue, batch and token figures alone.
        pipe.hincrby(metrics_key(), "result_cache_hits", 1)
        return
    if job.started_at is not None:
        _observe(pipe, "queued_seconds", job.started_at - job.created_at)
    if job.status is JobStatus.SUCCEEDED and job.result is not None:
        _stage_result(pipe, job.result)


def stage_webhook_attempt(pipe: redis.client.Pipeline, outcome: str) -> None:
    """Count a recorded webhook attempt, inside the caller's MULTI."""
    pipe.hincrby(metrics_key(), f"webhook_attempts:{outcome}", 1)


def _stage_result(pipe: redis.client.Pipeline, result: dict[str, Any]) -> None:
    timings = result.get("timings_ms") or {}
    usage = result.get("usage") or {}
    for name, ms in (("preprocess_seconds", "preprocess"), ("inference_seconds", "inference")):
        if isinstance(timings.get(ms), int | float):
            _observe(pipe, name, timings[ms] / 1000)
    for name, value in (
        ("batch_size", result.get("batch_size")),
        ("image_tiles", usage.get("image_tiles")),
        ("generated_tokens", usage.get("completion_tokens")),
    ):
        if isinstance(value, int | float):
            _observe(pipe, name, value)
    tokens = usage.get("completion_tokens")
    if isinstance(tokens, int):
        pipe.hincrby(metrics_key(), "generated_tokens", tokens)


def _observe(pipe: redis.client.Pipeline, name: str, value: float, label: str = "") -> None:
    value = max(value, 0.0)  # clocks of two hosts may disagree by a little
    series = f"{name}|{label}" if label else name
    bucket = bisect.bisect_left(HISTOGRAMS[name], value)  # the first bound >= value
    pipe.hincrby(metrics_key(), f"hist:{series}:{bucket}", 1)
    pipe.hincrbyfloat(metrics_key(), f"hist:{series}:sum", value)
    pipe.hincrby(metrics_key(), f"hist:{series}:count", 1)


@dataclass(frozen=True)
class Histogram:
    """One histogram series as Prometheus shows it: cumulative buckets, sum and count."""

    buckets: list[tuple[float, int]]  # (upper bound, observations <= it), +Inf last
    sum: float
    count: int


@dataclass(frozen=True)
class JobMetrics:
    submitted: int = 0
    finished: dict[tuple[str, str], int] = field(default_factory=dict)  # (status, code)
    # (histogram name, status label or "") -> its series
    histograms: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    webhook_attempts: dict[str, int] = field(default_factory=dict)  # outcome -> attempts
    generated_tokens: int = 0
    result_cache_hits: int = 0


def read_job_metrics(client: redis.Redis) -> JobMetrics:
    """The counters as they are now (one HGETALL)."""
    raw: dict[bytes, bytes] = client.hgetall(metrics_key())  # type: ignore[assignment]
    values = {k.decode(): v.decode() for k, v in raw.items()}
    finished: dict[tuple[str, str], int] = {}
    attempts: dict[str, int] = {}
    parts: dict[str, dict[str, str]] = {}
    for name, value in values.items():
        kind, _, rest = name.partition(":")
        if kind == "finished":
            status, _, code = rest.partition(":")
            finished[(status, code)] = int(value)
        elif kind == "webhook_attempts":
            attempts[rest] = int(value)
        elif kind == "hist":
            series, _, part = rest.rpartition(":")
            parts.setdefault(series, {})[part] = value
    histograms = {}
    for series, found in parts.items():
        name, _, label = series.partition("|")
        if name in HISTOGRAMS:
            histograms[(name, label)] = _histogram(HISTOGRAMS[name], found)
    return JobMetrics(
        submitted=int(values.get("submitted", 0)),
        finished=finished,
        histograms=histograms,
        webhook_attempts=attempts,
        generated_tokens=int(values.get("generated_tokens", 0)),
        result_cache_hits=int(values.get("result_cache_hits", 0)),
    )


def _histogram(bounds: tuple[float, ...], found: dict[str, str]) -> Histogram:
    cumulative, buckets = 0, []
    for i, bound in enumerate((*bounds, float("inf"))):
        cumulative += int(found.get(str(i), 0))
        buckets.append((bound, cumulative))
    # The count is the +Inf bucket by definition; the stored one is kept for a cross-check.
    return Histogram(buckets, float(found.get("sum", 0.0)), cumulative)
