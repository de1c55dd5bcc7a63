"""A careful client for the chaos run: every logical submit carries its own ``Idempotency-Key``
and is retried with that key until it is accepted, as a client that cannot tell "never arrived"
from "arrived, but the answer was lost" must do.

Retried: no answer at all (connection refused or reset, a read timeout), ``503`` and
``409 idempotency_key_in_flight``. Anything else is recorded as unexpected. The key is also written
into the question, so that every job record in Redis can be traced back to its logical submit:
a second job for one key (a retry that ran twice) is visible even if the client never saw it.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

import requests

from tests.images import photo

__all__ = ["ChaosClient", "LogicalSubmit", "submit_key_of"]

_TAG = re.compile(r"\(submit ([0-9a-f]{32})\)")
_IMAGES = [photo(64, 48, seed=n) for n in range(8)]
# Long enough that the old in-flight reservation (60 s) lapses within it: a retry that then
# creates a second job shows up as a duplicate, not as a client that gave up.
RETRY_FOR_S = 100.0


def submit_key_of(question: str) -> str | None:
    """The Idempotency-Key a job's question was tagged with (None: not one of ours)."""
    found = _TAG.search(question)
    return found.group(1) if found else None


@dataclass
class LogicalSubmit:
    """One logical submit: its key, and what each attempt met."""

    key: str
    started: float  # monotonic
    job_ids: list[str] = field(default_factory=list)  # from every 202 (one id, if all is well)
    no_answer: int = 0
    unavailable: int = 0  # 503
    in_flight: int = 0  # 409 idempotency_key_in_flight
    replayed: int = 0  # 202 with Idempotency-Replayed: true
    first_failure: float | None = None  # monotonic, of the first attempt without a 202
    accepted_at: float | None = None
    gave_up: str | None = None

    @property
    def retried(self) -> bool:
        return self.first_failure is not None


class ChaosClient:
    """``threads`` threads, each submitting one logical submit after another, ``every`` s apart,
    and cancelling about ``cancel_share`` of what was accepted."""

    def __init__(
        self,
        api: str,
        webhook_url: str,
        *,
        seed: int,
        threads: int = 2,
        every: float = 0.25,
        cancel_share: float = 0.05,
        max_new_tokens: str = "8",
    ) -> None:
        self.api, self.webhook_url, self.every = api, webhook_url, every
        self.cancel_share, self.max_new_tokens = cancel_share, max_new_tokens
        self.submits: dict[str, LogicalSubmit] = {}
        self.unexpected: list[str] = []
        self.cancel_asked: set[str] = set()  # every job a cancel was sent for (answered or not)
        self.canceled_at_once: set[str] = set()  # cancels answered 200 (the job was queued)
        self._on_wire = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._abandon = threading.Event()  # the test failed: stop retrying too
        self._threads = [
            threading.Thread(target=self._run, args=(seed * 100 + n,), daemon=True)
            for n in range(threads)
        ]

    # -- what the test reads ------------------------------------------------------------------
    @property
    def on_wire(self) -> int:
        """Submit requests sent and not yet answered, now."""
        with self._lock:
            return self._on_wire

    def accepted(self) -> list[str]:
        """The job id of every accepted logical submit (the first one, if several came back)."""
        with self._lock:
            return [s.job_ids[0] for s in self.submits.values() if s.job_ids]

    def unfinished_submits(self) -> list[LogicalSubmit]:
        with self._lock:
            return [s for s in self.submits.values() if s.accepted_at is None and not s.gave_up]

    # -- submitting ---------------------------------------------------------------------------
    def submit(
        self,
        *,
        max_new_tokens: str | None = None,
        first_headers: dict[str, str] | None = None,
        rng: random.Random | None = None,
        key: str | None = None,
    ) -> LogicalSubmit:
        """One logical submit, retried with its key (a fresh one unless given) until accepted;
        ``first_headers`` go on the first attempt only (a fault for it, not for its retries)."""
        rng = rng or random.Random()
        record = LogicalSubmit(key or uuid.uuid4().hex, time.monotonic())
        with self._lock:
            self.submits[record.key] = record
        data = {
            "question": f"What is in the picture? (submit {record.key})",
            "max_new_tokens": max_new_tokens or self.max_new_tokens,
            "webhook_url": self.webhook_url,
        }
        image = _IMAGES[rng.randrange(len(_IMAGES))]
        headers = {"Idempotency-Key": record.key, **(first_headers or {})}
        delay = 0.1
        with requests.Session() as session:
            while True:
                outcome = self._attempt(session, record, data, image, headers)
                if outcome != "retry":
                    return record
                if record.first_failure is None:
                    record.first_failure = time.monotonic()
                if self._abandon.is_set():
                    record.gave_up = "abandoned: the test is ending"
                    return record
                if time.monotonic() - record.started > RETRY_FOR_S:
                    record.gave_up = f"not accepted within {RETRY_FOR_S} s"
                    self._unexpected(f"{record.key}: {record.gave_up}")
                    return record
                headers = {"Idempotency-Key": record.key}
                time.sleep(delay * rng.uniform(0.5, 1.5))
                delay = min(delay * 2, 2.0)

    def _attempt(
        self,
        session: requests.Session,
        record: LogicalSubmit,
        data: dict[str, str],
        image: bytes,
        headers: dict[str, str],
    ) -> str:
        with self._lock:
            self._on_wire += 1
        try:
            reply = session.post(
                f"{self.api}/v1/jobs",
                data=data,
                files=[("image", ("a.jpg", image, "image/jpeg"))],
                headers=headers,
                timeout=(5, 30),
            )
        except requests.RequestException:
            record.no_answer += 1
            return "retry"
        finally:
            with self._lock:
                self._on_wire -= 1
        code = _error_code(reply)
        if reply.status_code == 202:
            record.job_ids.append(reply.json()["id"])
            record.replayed += reply.headers.get("Idempotency-Replayed") == "true"
            record.accepted_at = record.accepted_at or time.monotonic()
            if len(set(record.job_ids)) > 1:
                self._unexpected(f"{record.key}: two job ids {record.job_ids}")
            return "accepted"
        if reply.status_code == 503:
            record.unavailable += 1
            return "retry"
        if reply.status_code == 409 and code == "idempotency_key_in_flight":
            record.in_flight += 1
            return "retry"
        record.gave_up = f"{reply.status_code} {reply.text[:200]}"
        self._unexpected(f"{record.key}: {record.gave_up}")
        return "refused"

    def cancel(self, job_id: str) -> None:
        """Ask once; an unanswered cancel still counts as asked (it may have taken effect)."""
        with self._lock:
            self.cancel_asked.add(job_id)
        try:
            reply = requests.post(f"{self.api}/v1/jobs/{job_id}/cancel", timeout=(5, 30))
        except requests.RequestException:
            return
        if reply.status_code == 200:
            with self._lock:
                self.canceled_at_once.add(job_id)
        elif reply.status_code not in (202, 409, 503):
            self._unexpected(f"cancel {job_id}: {reply.status_code} {reply.text[:200]}")

    def _unexpected(self, what: str) -> None:
        with self._lock:
            self.unexpected.append(what)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            record = self.submit(rng=rng)
            if record.job_ids and rng.random() < self.cancel_share:
                self.cancel(record.job_ids[0])
            self._stop.wait(self.every * rng.uniform(0.5, 1.5))

    def __enter__(self) -> ChaosClient:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.stop()
        else:
            self.abandon()

    def stop(self, timeout: float = RETRY_FOR_S + 30) -> None:
        """Stop starting submits; the ones under way finish (accepted or given up)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def abandon(self) -> None:
        """Stop at once, retries included (the test is failing: its processes are going)."""
        self._abandon.set()
        self.stop(timeout=5)


def _error_code(reply: requests.Response) -> str | None:
    try:
        return str(reply.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None
