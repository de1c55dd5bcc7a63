"""When the client tries a request again (pure: no I/O, no clock).

Retried: ``429`` and ``503`` (the API says when, in ``Retry-After``), ``409 batch_storing`` (a
batch's retry while the API still stores what the first attempt sent, also with ``Retry-After``),
and requests that got no answer (a refused, reset or dropped connection, a timeout). Every
retried request is safe to repeat: reads, cancels, and submits (jobs and batches), which always
carry an ``Idempotency-Key`` (the same one on every attempt, so a retry of a submit that was in
fact stored returns that job or batch).

The wait before attempt n+1 is the API's ``Retry-After`` when it sent one, else an exponential
backoff (``backoff_s * 2**(n-1)``, at most ``max_backoff_s``) shortened by jitter to 50..100 %,
so that clients refused together do not come back together. A ``Retry-After`` longer than
``max_retry_after_s`` is not waited out: the error is raised at once, carrying it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RETRY_CODES", "RETRY_STATUSES", "RetryPolicy"]

RETRY_STATUSES = frozenset({429, 503})
# Errors of other statuses that are retried, by ``code``.
RETRY_CODES = frozenset({"batch_storing"})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included; 1: never retry
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts counts the first try too: at least 1")

    def delay(
        self, attempt: int, retry_after: float | None = None, *, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), or None to give up.

        ``retry_after``: the API's ``Retry-After`` for that attempt, in seconds, if it sent one.
        """
        if attempt >= self.attempts:
            return None
        return self.pause(attempt, retry_after, rng=rng)

    def wait_before(
        self, attempt: int, retry_after: float | None, deadline: float | None, now: float
    ) -> float | None:
        """``delay``; or with a ``deadline`` (a long poll riding out an API restart retries
        until its own deadline, not ``attempts`` times), ``pause`` unless it ends after it."""
        if deadline is None:
            return self.delay(attempt, retry_after)
        pause = self.pause(attempt, retry_after)
        return None if pause is None or now + pause >= deadline else pause

    def pause(
        self, attempt: int, retry_after: float | None = None, *, rng: random.Random | None = None
    ) -> float | None:
        """Like ``delay``, whatever the attempt count: None only for a ``Retry-After`` over
        ``max_retry_after_s``."""
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after_s else None
        backoff = min(self.backoff_s * 2 ** max(attempt - 1, 0), self.max_backoff_s)
        return backoff * (rng or random).uniform(0.5, 1.0)
