"""What one worker process holds (settings, store, the warm model, counters) and how it runs a job.

``process(job_id)`` is the whole life of one delivery: claim the job in the store, decode its
images, ask the model, store exactly one outcome. Every failure of the job itself ends in a stored
``failed`` state; nothing a job does can take the worker down.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from ..core.errors import ImageDecodeError, JobCanceled, JobFailure, JobTimedOut
from ..core.job import Job
from ..core.redis_client import connect
from ..core.result_cache import ResultCache
from ..core.settings import Settings
from ..core.status import JobStatus
from ..core.store import Claim, ClaimOutcome, JobStore
from ..core.workers import WorkerInfo, WorkerRegistry, WorkerState
from .answer import AnswerFn, WorkerDefunct
from .cancellation import CancelWatcher
from .gpu_memory import gpu_memory
from .threads import thread_count

__all__ = ["TEST_KILL_MARKER", "WorkerRuntime"]

T = TypeVar("T")

# Test only (INTERNVL_TEST_FAULTS=1): a job whose question contains this kills its worker.
TEST_KILL_MARKER = "[test-fault:kill-worker]"

log = logging.getLogger(__name__)

# How long a worker that could not load its model stays listed (as failed) after it exits.
_FAILED_VISIBLE_S = 600.0


class WorkerRuntime:
    def __init__(self, settings: Settings, *, name: str | None = None) -> None:
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        # Every task thread may talk to Redis at once.
        client = connect(settings.redis_target, max_connections=settings.worker_concurrency + 16)
        self.store = JobStore.from_settings(client, settings)
        self.result_cache = ResultCache.from_settings(client, settings)
        self.registry = WorkerRegistry(client)
        self.cancels = CancelWatcher(client)
        self.loaded: Any = None  # model.LoadedModel once load() has run
        self.answer_fn: AnswerFn | None = None
        self.engine: Any = None  # engine.Engine once load() has run
        self.preprocessor: Any = None  # engine.Preprocessor once load() has run
        self.loaded_at = 0.0
        self.state, self.state_since = WorkerState.LOADING, time.time()
        self.error: str | None = None  # why the model could not be loaded, or the worker died
        self.on_defunct: Callable[[str], None] | None = None  # how the entry point steps aside
        # Whether the Celery consumer is connected to the broker (set by worker/consumer_state.py);
        # None outside a Celery worker.
        self.consuming: bool | None = None
        self._lock = threading.Lock()
        self.counters = {"jobs_succeeded": 0, "jobs_failed": 0, "redeliveries_ignored": 0}
        # The deliveries this worker runs now (job id -> attempt token): the heartbeat renews
        # their leases; a job it stops holding for any reason lapses and goes back to the queue.
        self.held: dict[str, str] = {}
        # A job on its last attempt runs only when no other last-attempt job runs here, so that
        # a job that kills its worker (a poison job) cannot use up its neighbours' attempts.
        self._last_attempt = threading.Lock()
        self._stopping_now = False  # a forced stop: no new claim or lease (see hand_back)
        # One lease write at a time: a heartbeat's renewal cannot land after hand_back ended them.
        self._lease_lock = threading.Lock()
        self._claims_done = threading.Condition()  # claims under way: ``_claiming``
        self._claiming = 0
        # Test-only fault hooks (INTERNVL_TEST_FAULTS=1, set by worker/main.py): a question
        # containing TEST_KILL_MARKER kills this process each time it is claimed.
        self.test_faults = False

    # -- start-up -------------------------------------------------------------------------------
    def load(self, source: str | None = None) -> None:
        """Load the model and start the batching engine (imports torch: worker processes only).

        ``source`` is where the checkpoint is (``model_source.resolve_model``); the settings'
        model id by default."""
        from .engine import Engine, EngineConfig, Preprocessor, default_processes
        from .inference import EngineAnswerer
        from .model import load_model, model_dtype, resolve_device

        s = self.settings
        model_id = source or s.model
        device = resolve_device(s.device)
        processes = s.preprocess_processes
        if processes < 0:
            processes = default_processes(device.type)

        def preprocessor(processor: object) -> Preprocessor:
            return Preprocessor(
                model_id,
                processor,
                model_dtype(device),
                processes=processes,
                max_pixels=s.max_image_pixels,
                max_question_tokens=s.max_question_tokens,
                wait=False,
            )

        # A GPU worker's preprocessing processes (each imports torch and loads the processor:
        # ~15 s for 14 of them on an H200 host) start while this process loads the model.
        if processes > 0:
            self.preprocessor = preprocessor(None)
        try:
            loaded = load_model(model_id, s.device, gpus=s.gpus_per_worker)
        except BaseException:
            if self.preprocessor is not None:  # not left starting behind a worker that exits
                self.preprocessor.close(wait=False)
            raise
        if self.preprocessor is None:
            self.preprocessor = preprocessor(loaded.processor)
        self.engine = Engine(
            loaded,
            EngineConfig(
                max_batch_jobs=s.max_batch_jobs,
                max_batch_tiles=s.max_batch_tiles,
                max_wait_ms=s.batch_wait_ms,
                group_by_length=s.group_by_length,
                cuda_graphs=s.cuda_graphs,
                stall_s=s.engine_stall_s,
            ),
            on_dead=self.defunct,
        )
        # The decode graphs are captured (~10 s for the 1B shape on an H200) while the
        # preprocessing processes finish starting: engine.start() below waits for them, or
        # prepares them itself if this thread failed.
        threading.Thread(target=self.engine.prepare, name="decode-graphs", daemon=True).start()
        self.preprocessor.wait_started()
        self.engine.start()
        self.cancels.start()
        self.use_model(loaded, EngineAnswerer(loaded, self.engine, self.preprocessor))

    def shutdown(self) -> None:
        """Stop the engine once no task waits on it any more (after the pool has drained)."""
        if self.engine is not None:
            self.engine.stop()
        if self.preprocessor is not None:
            self.preprocessor.close()
        if self.state is WorkerState.DEFUNCT:
            self._publish_lasting()  # with the final counters
        self.close()

    def close(self) -> None:
        """Stop listening for cancels; close the Redis connections."""
        self.cancels.stop()
        self.store.redis.connection_pool.disconnect()

    def use_model(self, loaded: Any, answer_fn: AnswerFn) -> None:
        self.loaded, self.answer_fn, self.loaded_at = loaded, answer_fn, time.time()
        self.state, self.state_since = WorkerState.READY, self.loaded_at

    def fail(self, reason: str) -> None:
        """Record that the model could not be loaded, where ``/readyz`` shows it for a while."""
        self.state, self.state_since, self.error = WorkerState.FAILED, time.time(), reason
        self.registry.publish(self.info(), ttl_s=_FAILED_VISIBLE_S)

    def defunct(self, reason: str) -> None:
        """This worker can answer no job any more: say so where ``/readyz`` shows it, then let
        the entry point stop consuming and exit (its held jobs go back to the queue)."""
        self.state, self.state_since, self.error = WorkerState.DEFUNCT, time.time(), reason
        self._publish_lasting()
        if self.on_defunct is not None:
            self.on_defunct(reason)

    def _publish_lasting(self) -> None:
        """A heartbeat that outlives the process a while, for ``/readyz`` to say why it left."""
        try:
            self.registry.publish(self.info(), ttl_s=_FAILED_VISIBLE_S)
        except redis.RedisError as exc:
            log.warning("could not record the %s state in Redis: %s", self.state.value, exc)

    def info(self) -> WorkerInfo:
        with self._lock:
            counters = dict(self.counters)
        return WorkerInfo(
            name=self.name,
            pid=os.getpid(),
            model=self.settings.model,
            device=str(getattr(self.loaded, "device", "unknown")),
            gpu_name=getattr(self.loaded, "gpu_name", None),
            loaded_at=self.loaded_at,
            last_seen=time.time(),
            engine=self.engine.stats.snapshot() if self.engine is not None else None,
            gpu_index=self.settings.gpu_index if self.settings.gpu_index >= 0 else None,
            state=self.state,
            since=self.state_since,
            error=self.error,
            threads=thread_count(),
            queue=self.settings.queue_name,
            consuming=self.consuming,
            gpu_memory=gpu_memory(getattr(self.loaded, "devices", None)),
            gpus=list(self.settings.host_gpus) if self.settings.host_gpus is not None else None,
            gpu_names=getattr(self.loaded, "gpu_names", None),
            **counters,
        )

    def publish_heartbeat(self) -> WorkerInfo:
        """Publish this worker's heartbeat; returns what was published."""
        info = self.info()
        self.registry.publish(info, ttl_s=self.settings.heartbeat_interval_s * 3)
        self.renew_leases()
        return info

    def renew_leases(self, lease_s: float | None = None) -> int:
        """Extend the leases of every job this worker runs (``lease_s``, the setting's by
        default; a negative one ends them now, handing the jobs back to the reapers)."""
        lease_s = self.settings.lease_s if lease_s is None else lease_s
        with self._lease_lock:
            if self._stopping_now and lease_s > 0:
                return 0  # handed back: extending a lease now would strand its job
            with self._lock:
                held = dict(self.held)
            return self.store.renew_leases(held, lease_s)

    def holds_jobs(self) -> bool:
        """Whether a job runs here now (claimed, not yet finished)."""
        with self._lock:
            return bool(self.held)

    def hand_back(self) -> None:
        """Stopping now: claim nothing more, and end the leases of the jobs in hand so that
        another worker's reaper puts them back in the queue at its next pass, not a lease later."""
        with self._lease_lock, self._claims_done:
            self._stopping_now = True
            # A claim under way finishes first (a Redis call), so that its job is handed back
            # too rather than left running under a fresh lease.
            self._claims_done.wait_for(lambda: self._claiming == 0, timeout=2.0)
        try:
            self.renew_leases(lease_s=-1)
        except Exception as exc:  # Redis down: the leases lapse on their own
            log.warning("could not hand the jobs back: %s", exc)

    # -- one delivery ---------------------------------------------------------------------------
    def process(self, job_id: str) -> JobStatus | None:
        """Run one delivery of ``job_id``; returns the stored status, or None if nothing was run."""
        if self.state is WorkerState.DEFUNCT:  # not claimed: it goes back to the queue as is
            raise WorkerDefunct(self.error or "this worker is defunct")
        # Watched before the claim, so that a cancel arriving right after it is not missed.
        canceled = self.cancels.watch(job_id)
        try:
            return self._deliver(job_id, canceled)
        finally:
            self.cancels.unwatch(job_id)

    def _deliver(self, job_id: str, canceled: threading.Event) -> JobStatus | None:
        queued = self.store.get(job_id)
        last = self.settings.max_attempts - 1
        if queued is not None and last >= 1 and queued.attempts == last:
            with self._last_attempt:
                return self._claim_and_run(job_id, canceled)
        return self._claim_and_run(job_id, canceled)

    def _claim(self, job_id: str) -> Claim:
        """The store's claim, with the job held here (its lease renewed) if it was taken. None
        is taken once a forced stop began; one in progress then is waited for (hand_back)."""
        with self._claims_done:
            if self._stopping_now:  # its message is being handed back (see hand_back)
                raise WorkerDefunct("this worker is stopping now")
            self._claiming += 1
        try:
            claim = self.store.claim(
                job_id,
                max_attempts=self.settings.max_attempts,
                worker=self.name,
                lease_s=self.settings.lease_s,
            )
            if claim.outcome is ClaimOutcome.CLAIMED and claim.job is not None:
                with self._lock:
                    self.held[job_id] = claim.job.attempt_token
            return claim
        finally:
            with self._claims_done:
                self._claiming -= 1
                self._claims_done.notify_all()

    def _claim_and_run(self, job_id: str, canceled: threading.Event) -> JobStatus | None:
        claim = self._claim(job_id)
        if claim.outcome is ClaimOutcome.MISSING:
            log.warning("job %s: no record (unknown or expired); message dropped", job_id)
            return None
        if claim.outcome is ClaimOutcome.OWNED:
            log.info("job %s: another delivery runs it; duplicate message ignored", job_id)
            self._count("redeliveries_ignored")
            return None
        if claim.outcome is ClaimOutcome.ALREADY_TERMINAL:
            log.info("job %s: already finished; redelivered message ignored", job_id)
            self._count("redeliveries_ignored")
            return None
        assert claim.job is not None
        if claim.outcome is ClaimOutcome.GAVE_UP:
            log.error("job %s: failed after %d deliveries", job_id, claim.job.attempts)
            self._count("jobs_failed")
            return JobStatus.FAILED
        if claim.outcome is ClaimOutcome.CANCELED:
            log.info("job %s: canceled before it started (its own or its batch's cancel)", job_id)
            return JobStatus.CANCELED
        job = claim.job
        try:
            if self.test_faults and TEST_KILL_MARKER in job.question:
                log.error("job %s: test fault: killing this worker", job.id)
                os.kill(os.getpid(), signal.SIGKILL)
            return self._run(job, canceled)
        finally:
            with self._lock:
                self.held.pop(job.id, None)

    def _run(self, job: Job, canceled: threading.Event) -> JobStatus | None:
        result: dict[str, Any] | None = None
        error: dict[str, str] | None = None
        try:
            result = self._answer(job, canceled)
            status = JobStatus.SUCCEEDED
        except WorkerDefunct:
            raise  # not the job's fault: it is handed back, not failed
        except JobCanceled as exc:
            status, error = JobStatus.CANCELED, exc.to_dict()
        except JobFailure as exc:
            status, error = JobStatus.FAILED, exc.to_dict()
        except redis.RedisError:
            # Redis went away mid-job (its images could not be read...): not the job's fault.
            # Nothing is stored; the job's lease, no longer renewed, brings it back.
            raise
        except Exception as exc:  # a bug must fail the job, not the worker
            log.exception("job %s: unexpected error", job.id)
            status = JobStatus.FAILED
            error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
        stored = self._while_redis_recovers(
            lambda: self.store.finish(job, status, result=result, error=error)
        )
        if stored is None:
            log.warning("job %s: another delivery owns it now; outcome discarded", job.id)
            return None
        self._count("jobs_succeeded" if status is JobStatus.SUCCEEDED else "jobs_failed")
        if stored.status is JobStatus.SUCCEEDED and stored.result is not None:
            self._keep_answer(stored.cache_digest, stored.result)
        # DEBUG: a line per job is hundreds a second on a GPU; the heartbeat logs a summary.
        log.debug(
            "job %s %s in %.0f ms%s",
            job.id,
            status.value,
            ((stored.finished_at or 0) - job.created_at) * 1000,
            f" ({error['code']})" if error else "",
        )
        return status

    def _keep_answer(self, cache_digest: str, result: dict[str, Any]) -> None:
        """Put a stored answer in the result cache, under this worker's model (which answered
        it). Best effort: an answer not kept is merely computed again next time."""
        try:
            self.result_cache.put(self.settings.model, cache_digest, result)
        except redis.RedisError as exc:
            log.warning("could not keep an answer in the result cache: %s", exc)

    def _answer(self, job: Job, canceled: threading.Event) -> dict[str, Any]:
        if self.answer_fn is None:
            raise RuntimeError("the worker has no model loaded")
        # The deadline counts from submission, so time spent queued counts too.
        remaining = job.created_at + job.params.timeout_s - time.time()
        if remaining <= 0:
            raise JobTimedOut("the job passed its deadline (timeout_s) before it started")
        deadline = time.monotonic() + remaining
        blobs = self.store.images(job.id)
        if len(blobs) != job.image_count:
            raise ImageDecodeError(
                f"the job's images are gone ({len(blobs)} of {job.image_count} found)"
            )
        if canceled.is_set():
            raise JobCanceled("the job was canceled before it reached the model")
        reply = self.answer_fn(
            blobs,
            job.question,
            max_new_tokens=job.params.max_new_tokens,
            max_tiles=job.params.max_tiles,
            deadline=deadline,
            is_canceled=canceled.is_set,
            priority=job.priority.rank,
        )
        queued_ms = ((job.started_at or job.created_at) - job.created_at) * 1000
        return {
            "answer": reply.text,
            "model": self.settings.model,
            "usage": {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "image_tiles": reply.image_tiles,
            },
            "batch_size": reply.batch_size,
            "cached": False,
            "timings_ms": {
                "queued": round(queued_ms, 1),
                "preprocess": round(reply.preprocess_ms, 1),
                "inference": round(reply.inference_ms, 1),
                "total": round((time.time() - job.created_at) * 1000, 1),
            },
        }

    def _while_redis_recovers(self, store: Callable[[], T]) -> T:
        """``store()``, tried again while Redis is unreachable (a restart), for up to a lease:
        the outcome in hand is worth keeping. Past that the error is raised, and the job's
        lease, no longer renewed, brings it back."""
        deadline = time.monotonic() + max(self.settings.lease_s, 5.0)
        while True:
            try:
                return store()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("Redis unreachable (%s); storing the outcome again shortly", exc)
                time.sleep(0.5)

    def _count(self, counter: str) -> None:
        with self._lock:
            self.counters[counter] += 1
