"""The per-key submit rate limit: a fixed-window counter in Redis.

Each owner (an API key id; ``""`` when the API runs open, so all anonymous callers share one
bucket) has one counter per window, ``rate_key(owner, floor(now / window_s))``, incremented by
every submit and expiring with its window. Once it passes ``limit``, submits are refused with
``429`` and ``Retry-After`` set to the seconds left in the window.

A fixed window, not a sliding one: a caller can spend ``limit`` at the end of one window and
``limit`` again at the start of the next, so up to ``2 x limit`` submits may land within one
window's length around a boundary. That is acceptable here: the limit exists to stop one key from
flooding the queue, not to meter it exactly; the bound is still hard (never more than 2x), the
queue cap (``INTERNVL_MAX_QUEUED_JOBS``) guards the workers regardless, and a fixed window costs one
round trip and one small key per owner, where a sliding log would keep a timestamp per submit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import redis

from .errors import ServiceUnavailable, TooManyRequests
from .keys import rate_key

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(
        self,
        client: redis.Redis,
        limit: int,
        window_s: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if limit < 0 or window_s < 1:
            raise ValueError("the rate limit must be >= 0 and its window >= 1 s")
        self.redis = client
        self.limit = limit
        self.window_s = window_s
        # Wall-clock time, not Redis TIME: several API hosts agree on the window to within their
        # clock skew, which is far below a window, and it saves a round trip.
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def check(self, owner: str) -> None:
        """Count one submit by ``owner``; raise ``TooManyRequests`` once it is over the limit.

        Refused submits count too: a client that keeps hammering stays refused until the window
        ends, which is when ``Retry-After`` tells it to come back.
        """
        if not self.enabled:
            return
        now = self._clock()
        window = int(now // self.window_s)
        key = rate_key(owner, window)
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        # Set on every call, so a counter can never outlive its window even if one EXPIRE was lost;
        # the extra second covers clock skew between API hosts.
        pipe.expire(key, self.window_s + 1)
        try:
            count, _ = pipe.execute()
        except redis.RedisError as exc:
            raise ServiceUnavailable("the rate limiter is unavailable; try again") from exc
        if count > self.limit:
            window_end = (window + 1) * self.window_s
            retry_after = max(1, math.ceil(window_end - now))
            raise TooManyRequests(
                f"rate limit of {self.limit} submits per {self.window_s} s exceeded; "
                f"retry in {retry_after} s",
                retry_after=retry_after,
            )
