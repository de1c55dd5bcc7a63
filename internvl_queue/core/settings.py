"""One settings object, read from the environment once, at an entry point.

Factories (``create_app``, ``create_celery``, the worker runtime) take a ``Settings``; nothing
below the entry points reads ``os.environ``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Literal

from .redis_client import RedisTarget, parse_sentinels

__all__ = ["DEFAULT_MODEL", "Settings", "SettingsError"]

DEFAULT_MODEL = "OpenGVLab/InternVL3-1B-hf"

Device = Literal["auto", "cpu", "cuda"]
AuthMode = Literal["required", "open"]

# Seconds between webhook attempts: 11 attempts over about 24 hours (before jitter, which only
# shortens a wait), so the default job retention of 24 h outlives every retry.
DEFAULT_WEBHOOK_SCHEDULE = "5,30,120,600,1800,3600,7200,14400,28800,28800"


class SettingsError(ValueError):
    """Raised when a setting is invalid or contradicts another; the message names the variables."""


def _env(name: str, help: str) -> dict[str, str]:
    return {"env": name, "help": help}


# A job still queued at its deadline is marked ``timeout`` by a reaper pass (a heartbeat) later;
# its record must outlive the deadline by more than that.
RETENTION_MARGIN_S = 60


@dataclass(frozen=True)
class Settings:
    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata=_env("REDIS_URL", "Redis for job records, images and the Celery broker"),
    )
    redis_sentinels: str = field(
        default="",
        metadata=_env(
            "REDIS_SENTINELS", "host:port,host:port of Redis Sentinels naming the primary"
        ),
    )
    redis_master_name: str = field(
        default="",
        metadata=_env("REDIS_MASTER_NAME", "the primary's name in the sentinels' configuration"),
    )
    redis_sentinel_password: str = field(
        default="",
        metadata=_env("REDIS_SENTINEL_PASSWORD", "password of the sentinels themselves"),
    )
    model: str = field(
        default=DEFAULT_MODEL,
        metadata=_env("INTERNVL_MODEL", "hub id or local directory of an -hf InternVL checkpoint"),
    )
    device: Device = field(
        default="auto", metadata=_env("INTERNVL_DEVICE", "auto (CUDA if present), cpu or cuda")
    )
    max_request_bytes: int = field(
        default=20 * 1024 * 1024,
        metadata=_env("INTERNVL_MAX_REQUEST_BYTES", "largest request body accepted"),
    )
    max_image_pixels: int = field(
        default=40_000_000,
        metadata=_env("INTERNVL_MAX_IMAGE_PIXELS", "largest image (width x height) accepted"),
    )
    request_read_timeout_s: float = field(
        default=30.0,
        metadata=_env(
            "INTERNVL_REQUEST_READ_TIMEOUT_S",
            "seconds a request body may pause before the API answers 408 and closes",
        ),
    )
    max_request_pixels: int = field(
        default=100_000_000,
        metadata=_env("INTERNVL_MAX_REQUEST_PIXELS", "most pixels of all a request's images"),
    )
    max_images: int = field(default=8, metadata=_env("INTERNVL_MAX_IMAGES", "most images per job"))
    max_question_chars: int = field(
        default=8000, metadata=_env("INTERNVL_MAX_QUESTION_CHARS", "longest question")
    )
    max_question_tokens: int = field(
        default=4096,
        metadata=_env(
            "INTERNVL_MAX_QUESTION_TOKENS",
            "most tokens in a question: the worker counts them exactly (prompt_too_long); the API "
            "refuses over 4 UTF-8 bytes per token at once (question_too_long)",
        ),
    )
    max_tiles: int = field(
        default=12,
        metadata=_env("INTERNVL_MAX_TILES", "cap on tiles per image (1..12); also the default"),
    )
    max_new_tokens_limit: int = field(
        default=4096, metadata=_env("INTERNVL_MAX_NEW_TOKENS", "largest max_new_tokens accepted")
    )
    default_max_new_tokens: int = field(
        default=512,
        metadata=_env("INTERNVL_DEFAULT_MAX_NEW_TOKENS", "max_new_tokens when a job names none"),
    )
    job_retention_s: int = field(
        default=24 * 3600,
        metadata=_env("INTERNVL_JOB_RETENTION_S", "how long job records are kept"),
    )
    redis_min_replicas: int = field(
        default=0,
        metadata=_env(
            "INTERNVL_REDIS_MIN_REPLICAS",
            "replicas that must hold a new job (or an outcome) before it is acknowledged",
        ),
    )
    redis_replica_timeout_ms: int = field(
        default=500,
        metadata=_env(
            "INTERNVL_REDIS_REPLICA_TIMEOUT_MS", "how long a write waits for those replicas"
        ),
    )
    queue_name: str = field(
        default="internvl", metadata=_env("INTERNVL_QUEUE", "Celery queue the GPU workers consume")
    )
    visibility_timeout_s: int = field(
        default=3600,
        metadata=_env(
            "INTERNVL_VISIBILITY_TIMEOUT_S",
            "seconds before an unacknowledged job message is redelivered",
        ),
    )
    max_attempts: int = field(
        default=3,
        metadata=_env("INTERNVL_MAX_ATTEMPTS", "deliveries of one job before it fails for good"),
    )
    heartbeat_interval_s: float = field(
        default=5.0, metadata=_env("INTERNVL_HEARTBEAT_S", "worker heartbeat period")
    )
    lease_s: float = field(
        default=15.0,
        metadata=_env(
            "INTERNVL_LEASE_S",
            "a running job returns to the queue this long after its worker stopped renewing it",
        ),
    )
    default_timeout_s: int = field(
        default=600,
        metadata=_env(
            "INTERNVL_DEFAULT_TIMEOUT_S", "a job's deadline (from submission) if it names none"
        ),
    )
    max_timeout_s: int = field(
        default=3600, metadata=_env("INTERNVL_MAX_TIMEOUT_S", "largest timeout_s accepted")
    )
    worker_concurrency: int = field(
        # Twice the largest batch: while one batch runs, the next one is being prepared.
        default=512,
        metadata=_env(
            "INTERNVL_WORKER_CONCURRENCY",
            "jobs one worker holds at once (threads preparing inputs and waiting on the engine)",
        ),
    )
    max_batch_jobs: int = field(
        default=256, metadata=_env("INTERNVL_MAX_BATCH_JOBS", "most jobs in one GPU batch")
    )
    max_batch_tiles: int = field(
        default=512, metadata=_env("INTERNVL_MAX_BATCH_TILES", "most image tiles in one GPU batch")
    )
    batch_wait_ms: float = field(
        default=5.0,
        metadata=_env("INTERNVL_BATCH_WAIT_MS", "how long a batch's first job waits for company"),
    )
    group_by_length: bool = field(
        default=True,
        metadata=_env(
            "INTERNVL_GROUP_BY_LENGTH", "batch only jobs of similar max_new_tokens (power of two)"
        ),
    )
    preprocess_processes: int = field(
        default=-1,
        metadata=_env(
            "INTERNVL_PREPROCESS_PROCESSES",
            "processes decoding and tiling images (-1: auto, most cores on GPU, 0 on CPU)",
        ),
    )
    engine_stall_s: float = field(
        default=120.0,
        metadata=_env(
            "INTERNVL_ENGINE_STALL_S",
            "seconds without engine progress, while jobs wait, before the worker steps aside",
        ),
    )
    gil_switch_ms: float = field(
        # Every torch call of the engine thread lets go of the GIL and must take it back; while
        # another thread of the worker runs Python (Celery, Redis replies, JSON) that can wait a
        # whole switch interval. On the CPU with the tiny model, the engine's W1 burst beside two
        # busy threads ran 2.6 jobs/s at Python's 5 ms and 14.2 at 0.2 ms (74.4 / 72.4 alone):
        # python -m benchmarks.gil_handoff --model DIR (benchmarks/RESULTS.md).
        default=0.2,
        metadata=_env(
            "INTERNVL_GIL_SWITCH_MS",
            "the worker's Python switch interval: how long a busy thread keeps the GIL from the "
            "engine thread (ms)",
        ),
    )
    cuda_graphs: bool = field(
        default=True, metadata=_env("INTERNVL_CUDA_GRAPHS", "replay decode steps as CUDA graphs")
    )
    gpu_index: int = field(
        default=-1,
        metadata=_env(
            "INTERNVL_GPU_INDEX",
            "the host GPU this worker reports (set by `worker --gpus` for each child; -1: none)",
        ),
    )
    gpu_group: str = field(
        default="",
        metadata=_env(
            "INTERNVL_GPU_GROUP",
            "the host GPUs this worker reports, comma-separated (set by `worker --gpus` for each "
            "child; empty: INTERNVL_GPU_INDEX alone)",
        ),
    )
    gpus_per_worker: int = field(
        default=1,
        metadata=_env(
            "INTERNVL_GPUS_PER_WORKER",
            "GPUs the worker loads its model across: its first N visible GPUs, decoder layers "
            "split between them (set by `worker --gpus-per-worker N` for each child)",
        ),
    )
    # -- access and backpressure --------------------------------------------------------------
    auth: AuthMode = field(
        default="required",
        metadata=_env(
            "INTERNVL_AUTH",
            "required: every /v1/ request needs an API key, even while none exists; open: no "
            "key needed while none exists (`up` sets open unless you set it)",
        ),
    )
    max_queued_bytes: int = field(
        default=2 * 1024**3,
        metadata=_env(
            "INTERNVL_MAX_QUEUED_BYTES",
            "image bytes of queued jobs held in Redis before submits get 503 (0: no cap)",
        ),
    )
    max_waiters: int = field(
        # Under `internvl-queue api` a long poll holds a socket and a few objects, no thread.
        default=1000,
        metadata=_env(
            "INTERNVL_MAX_WAITERS",
            "long polls (?wait=, Prefer: wait) one API process holds at once; more answer at once",
        ),
    )
    max_queued_jobs: int = field(
        default=10_000,
        metadata=_env(
            "INTERNVL_MAX_QUEUED_JOBS",
            "jobs waiting for a worker before submits get 503 (0: no cap)",
        ),
    )
    # -- batches (POST /v1/batches) ------------------------------------------------------------
    max_batch_requests: int = field(
        default=50_000,
        metadata=_env("INTERNVL_MAX_BATCH_REQUESTS", "most lines (requests) in one batch"),
    )
    max_batch_request_bytes: int = field(
        default=512 * 1024 * 1024,
        metadata=_env(
            "INTERNVL_MAX_BATCH_REQUEST_BYTES",
            "largest body POST /v1/batches accepts (other routes: INTERNVL_MAX_REQUEST_BYTES)",
        ),
    )
    max_queued_batch_jobs: int = field(
        default=200_000,
        metadata=_env(
            "INTERNVL_MAX_QUEUED_BATCH_JOBS",
            "queued jobs of batches before a new batch gets 503; they do not count against "
            "INTERNVL_MAX_QUEUED_JOBS (0: no cap)",
        ),
    )
    rate_limit_jobs: int = field(
        default=3000,
        metadata=_env(
            "INTERNVL_RATE_LIMIT_JOBS",
            "submits one API key may make per rate-limit window before 429 (0: no limit)",
        ),
    )
    rate_limit_window_s: int = field(
        default=60, metadata=_env("INTERNVL_RATE_LIMIT_WINDOW_S", "the rate-limit window")
    )
    max_high_per_key: int = field(
        default=100,
        metadata=_env(
            "INTERNVL_MAX_HIGH_PER_KEY",
            "high-priority jobs one API key may have queued or running at once before 429 "
            "(0: no limit)",
        ),
    )
    idempotency_ttl_s: int = field(
        default=24 * 3600,
        metadata=_env("INTERNVL_IDEMPOTENCY_TTL_S", "how long an Idempotency-Key is remembered"),
    )
    # -- result cache ---------------------------------------------------------------------------
    result_cache_ttl_s: int = field(
        default=0,
        metadata=_env(
            "INTERNVL_RESULT_CACHE_TTL_S",
            "how long a succeeded job's answer is reused for identical jobs (0: no result cache)",
        ),
    )
    result_cache_max_entries: int = field(
        default=10000,
        metadata=_env(
            "INTERNVL_RESULT_CACHE_MAX_ENTRIES",
            "most answers the result cache holds; the oldest go first",
        ),
    )
    result_cache_shared: bool = field(
        default=False,
        metadata=_env(
            "INTERNVL_RESULT_CACHE_SHARED",
            "reuse answers across API keys (a hit then tells a key that another asked the same)",
        ),
    )
    # -- images by URL (fetched by the API at submit) -------------------------------------------
    image_fetch_timeout_s: float = field(
        default=10.0,
        metadata=_env(
            "INTERNVL_IMAGE_FETCH_TIMEOUT_S",
            "seconds all of one submit's image URLs may take to fetch (DNS, connect, redirects, "
            "body), after which it is refused with image_url_timeout",
        ),
    )
    image_fetch_concurrency: int = field(
        default=4,
        metadata=_env(
            "INTERNVL_IMAGE_FETCH_CONCURRENCY",
            "submits one API process fetches image URLs for at once; more get 503 "
            "image_fetch_busy (keep it under the API's 8 threads per process)",
        ),
    )
    image_url_allowed_cidrs: str = field(
        default="",
        metadata=_env(
            "INTERNVL_IMAGE_URL_ALLOWED_CIDRS",
            "comma-separated CIDRs image URLs may reach although private/loopback/link-local",
        ),
    )
    # -- webhooks -------------------------------------------------------------------------------
    webhook_secrets: str = field(
        default="",
        metadata=_env(
            "WEBHOOK_SECRETS",
            "comma-separated whsec_ secrets; the first signs new events, all sign (rotation)",
        ),
    )
    webhook_retry_schedule: str = field(
        default=DEFAULT_WEBHOOK_SCHEDULE,
        metadata=_env(
            "WEBHOOK_RETRY_SCHEDULE", "comma-separated seconds between webhook delivery attempts"
        ),
    )
    webhook_allowed_cidrs: str = field(
        default="",
        metadata=_env(
            "WEBHOOK_ALLOWED_CIDRS",
            "comma-separated CIDRs webhooks may reach although private/loopback/link-local",
        ),
    )
    webhook_timeout_s: float = field(
        default=10.0,
        metadata=_env(
            "WEBHOOK_TIMEOUT_S",
            "the whole of one attempt (DNS, connect, TLS, send, reply), after which it is cut off",
        ),
    )
    webhook_queue: str = field(
        default="internvl-webhooks",
        metadata=_env("WEBHOOK_QUEUE", "Celery queue the webhook worker consumes"),
    )
    webhook_concurrency: int = field(
        default=16,
        metadata=_env("WEBHOOK_CONCURRENCY", "deliveries one webhook worker runs at once"),
    )
    webhook_poll_s: float = field(
        default=0.5,
        metadata=_env("WEBHOOK_POLL_S", "how often the webhook worker looks for due events"),
    )

    # -- derived values -------------------------------------------------------------------------
    @cached_property
    def webhook_secret_list(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.webhook_secrets.split(",") if s.strip())

    @cached_property
    def host_gpus(self) -> tuple[int, ...] | None:
        """The host GPUs this worker reports (INTERNVL_GPU_GROUP, else INTERNVL_GPU_INDEX), or
        None when it was not started by ``worker --gpus``."""
        if self.gpu_group.strip():
            return tuple(int(g) for g in self.gpu_group.split(","))
        return (self.gpu_index,) if self.gpu_index >= 0 else None

    @cached_property
    def webhook_schedule(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.webhook_retry_schedule.split(",") if s.strip())

    @property
    def webhook_window_s(self) -> float:
        """The longest a webhook event can keep being retried, counted from its creation."""
        return sum(self.webhook_schedule) + self.webhook_lease_s

    @property
    def webhook_lease_s(self) -> float:
        """How long one attempt may hold an event before another worker may take it over.

        An attempt is cut off after ``webhook_timeout_s`` in all (``webhooks.http``), and its
        task may first wait about as long for a free thread (prefetched behind a running attempt);
        5 s more cover recording it. A delivery that finds too little of its lease left does not
        start (``webhooks.delivery``), so two attempts of one event never overlap."""
        return 2 * self.webhook_timeout_s + 5

    @cached_property
    def webhook_allowed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(
            ipaddress.ip_network(c.strip(), strict=False)
            for c in self.webhook_allowed_cidrs.split(",")
            if c.strip()
        )

    @cached_property
    def image_url_allowed_networks(
        self,
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(
            ipaddress.ip_network(c.strip(), strict=False)
            for c in self.image_url_allowed_cidrs.split(",")
            if c.strip()
        )

    @cached_property
    def redis_target(self) -> RedisTarget:
        """Where Redis is: REDIS_URL, or the primary the sentinels name (with REDIS_URL's
        database and password)."""
        return RedisTarget(
            self.redis_url,
            parse_sentinels(self.redis_sentinels),
            self.redis_master_name.strip(),
            self.redis_sentinel_password,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; unset ones keep their defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, f.metadata["env"], raw, type(f.default))
        return cls(**values)  # type: ignore[arg-type]  # validated by __post_init__

    def __post_init__(self) -> None:
        # Settings built in code (tests, embedders) are held to the same rules as the env's.
        self.validate()

    def validate(self) -> None:
        """``SettingsError`` with one sentence naming the variables, for any bad or contradictory
        value."""
        try:
            self.redis_target.check()
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if self.auth not in ("required", "open"):
            raise SettingsError(f"INTERNVL_AUTH must be required or open, not {self.auth!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SettingsError(f"INTERNVL_DEVICE must be auto, cpu or cuda, not {self.device!r}")
        if not 1 <= self.max_tiles <= 12:
            raise SettingsError("INTERNVL_MAX_TILES must be between 1 and 12")
        if not 1 <= self.default_max_new_tokens <= self.max_new_tokens_limit:
            raise SettingsError(
                "INTERNVL_DEFAULT_MAX_NEW_TOKENS must be in 1..INTERNVL_MAX_NEW_TOKENS"
            )
        if self.lease_s < 2 * self.heartbeat_interval_s:
            raise SettingsError(
                "INTERNVL_LEASE_S must be at least twice INTERNVL_HEARTBEAT_S (the heartbeat "
                "renews the leases; about three heartbeats is right)"
            )
        self._validate_webhooks()
        self._validate_timeouts()
        self._validate_image_urls()
        for name in (
            "rate_limit_window_s",
            "idempotency_ttl_s",
            "webhook_concurrency",
            "max_request_bytes",
            "max_image_pixels",
            "max_images",
            "max_question_chars",
            "max_question_tokens",
            "job_retention_s",
            "visibility_timeout_s",
            "max_attempts",
            "max_waiters",
            "max_batch_requests",
            "max_batch_request_bytes",
            "gpus_per_worker",
        ):
            if getattr(self, name) < 1:
                env = next(f.metadata["env"] for f in fields(self) if f.name == name)
                raise SettingsError(f"{env} must be positive")
        if self.gpu_group.strip():
            try:
                self.host_gpus  # noqa: B018  (parsed here, once, to refuse a bad value at start)
            except ValueError:
                raise SettingsError(
                    f"INTERNVL_GPU_GROUP must be GPU indices like 0,1 (not {self.gpu_group!r})"
                ) from None
        if self.redis_min_replicas < 0:
            raise SettingsError("INTERNVL_REDIS_MIN_REPLICAS must be 0 (no wait) or positive")
        # WAIT 0 would block for ever; over the client's 10 s socket timeout, the read fails.
        if not 1 <= self.redis_replica_timeout_ms <= 5000:
            raise SettingsError(
                "INTERNVL_REDIS_REPLICA_TIMEOUT_MS must be between 1 and 5000 (milliseconds)"
            )
        if self.max_high_per_key < 0:
            raise SettingsError("INTERNVL_MAX_HIGH_PER_KEY must be 0 (no limit) or positive")
        if self.result_cache_ttl_s < 0 or self.result_cache_max_entries < 1:
            raise SettingsError(
                "INTERNVL_RESULT_CACHE_TTL_S must be 0 (off) or positive, and "
                "INTERNVL_RESULT_CACHE_MAX_ENTRIES positive"
            )
        if self.max_queued_batch_jobs < 0:
            raise SettingsError("INTERNVL_MAX_QUEUED_BATCH_JOBS must be 0 (no cap) or positive")
        if self.max_queued_bytes < 0:
            raise SettingsError("INTERNVL_MAX_QUEUED_BYTES must be 0 (no cap) or positive")
        if not 0 < self.gil_switch_ms <= 100:
            raise SettingsError("INTERNVL_GIL_SWITCH_MS must be between 0 and 100 (milliseconds)")

    def _validate_timeouts(self) -> None:
        """The longest job (``max_timeout_s``) must fit in everything that has to outlive it."""
        if self.default_timeout_s < 1 or self.max_timeout_s < 1:
            raise SettingsError(
                "INTERNVL_DEFAULT_TIMEOUT_S and INTERNVL_MAX_TIMEOUT_S must be positive"
            )
        if self.default_timeout_s > self.max_timeout_s:
            raise SettingsError(
                f"INTERNVL_DEFAULT_TIMEOUT_S ({self.default_timeout_s}) must not exceed "
                f"INTERNVL_MAX_TIMEOUT_S ({self.max_timeout_s}): lower the default or raise the max"
            )
        if self.visibility_timeout_s < self.max_timeout_s:
            raise SettingsError(
                f"INTERNVL_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must be at least "
                f"INTERNVL_MAX_TIMEOUT_S ({self.max_timeout_s}), or a job still running would be "
                "handed to a second worker"
            )
        if self.job_retention_s < self.max_timeout_s + RETENTION_MARGIN_S:
            raise SettingsError(
                f"INTERNVL_JOB_RETENTION_S ({self.job_retention_s}) must exceed "
                f"INTERNVL_MAX_TIMEOUT_S ({self.max_timeout_s}) by at least "
                f"{RETENTION_MARGIN_S} s, or a job still queued at its deadline could expire "
                "before it is marked timeout"
            )

    def _validate_image_urls(self) -> None:
        try:
            self.image_url_allowed_networks  # noqa: B018 (parsed here to fail at start-up)
        except ValueError as exc:
            raise SettingsError(f"INTERNVL_IMAGE_URL_ALLOWED_CIDRS: {exc}") from None
        if self.image_fetch_timeout_s <= 0:
            raise SettingsError("INTERNVL_IMAGE_FETCH_TIMEOUT_S must be positive")
        if self.image_fetch_concurrency < 1:
            raise SettingsError("INTERNVL_IMAGE_FETCH_CONCURRENCY must be positive")

    def _validate_webhooks(self) -> None:
        for secret in self.webhook_secret_list:
            if not secret.startswith("whsec_"):
                raise SettingsError("WEBHOOK_SECRETS: every secret must start with whsec_")
            try:
                if len(base64.b64decode(secret[len("whsec_") :], validate=True)) < 16:
                    raise SettingsError("WEBHOOK_SECRETS: a secret must hold at least 16 bytes")
            except binascii.Error:
                raise SettingsError("WEBHOOK_SECRETS: a secret is whsec_ + base64") from None
        try:
            schedule = self.webhook_schedule
        except ValueError:
            raise SettingsError("WEBHOOK_RETRY_SCHEDULE must be comma-separated seconds") from None
        if not schedule or any(delay < 0 for delay in schedule):
            raise SettingsError("WEBHOOK_RETRY_SCHEDULE needs at least one non-negative delay")
        try:
            self.webhook_allowed_networks  # noqa: B018 (parsed here to fail at start-up)
        except ValueError as exc:
            raise SettingsError(f"WEBHOOK_ALLOWED_CIDRS: {exc}") from None
        if self.webhook_timeout_s <= 0 or self.webhook_poll_s <= 0:
            raise SettingsError("WEBHOOK_TIMEOUT_S and WEBHOOK_POLL_S must be positive")
        if self.job_retention_s < self.webhook_window_s:
            raise SettingsError(
                f"INTERNVL_JOB_RETENTION_S ({self.job_retention_s}) must cover the webhook retry "
                f"window ({self.webhook_window_s:.0f} s, WEBHOOK_RETRY_SCHEDULE plus one attempt)"
            )

    @classmethod
    def documented(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) of every setting: docs/configuration.md, ``--help``."""
        return [(f.metadata["env"], str(f.default), f.metadata["help"]) for f in fields(cls)]


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _parse(name: str, env: str, raw: str, kind: type) -> object:
    if kind is bool:
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise SettingsError(f"{env}={raw!r} is not a boolean (true/false)")
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise SettingsError(f"{env}={raw!r} is not a valid {kind.__name__}") from None
    return raw
