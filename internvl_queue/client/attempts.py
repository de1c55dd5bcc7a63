"""One request's tries: after each failed one, the error to raise or the pause before the next.

``Client._send`` and ``AsyncClient._send`` do only the I/O (and the sleeping) and ask this what
a failure means, so the two clients retry alike (``retry.py`` says when and how long).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from .calls import retry_after_of
from .errors import ApiUnreachable, ClientError, api_error
from .retry import RETRY_CODES, RETRY_STATUSES, RetryPolicy

__all__ = ["Attempts"]


class Attempts:
    """The tries of one request to ``base_url``. With ``deadline`` (monotonic), retries go on
    until then instead of ``policy.attempts``."""

    def __init__(
        self, policy: RetryPolicy, base_url: str, timeout: float, *, deadline: float | None
    ) -> None:
        self.policy = policy
        self.base_url = base_url
        self.timeout = timeout
        self.deadline = deadline
        self.made = 0

    def after_reply(self, status: int, content: bytes, headers: Mapping[str, str]) -> float:
        """The pause before the next try after a reply that is not 2xx; raises its typed error
        when it is not retried, or no try is left."""
        self.made += 1
        failure = api_error(status, content, retry_after_of(headers))
        failure.retried = self.made > 1
        if status not in RETRY_STATUSES and failure.code not in RETRY_CODES:
            raise failure
        return self._pause_or_raise(failure, failure.retry_after)

    def after_no_answer(self, *, timed_out: bool, repeatable: bool) -> float:
        """The pause before the next try after no answer came (a refused, reset or dropped
        connection, a timeout); raises ``ApiUnreachable`` when the request is not repeatable
        (it may have gone through: sending it again may repeat it), or no try is left."""
        self.made += 1
        if timed_out:
            message = f"the API at {self.base_url} did not answer within {self.timeout:g} s"
        else:
            message = (
                f"cannot reach the API at {self.base_url} (the connection failed or was dropped)"
            )
        failure = ApiUnreachable(message, timed_out=timed_out)
        if not repeatable:
            raise failure from None
        return self._pause_or_raise(failure, None)

    def _pause_or_raise(self, failure: ClientError, retry_after: float | None) -> float:
        pause = self.policy.wait_before(self.made, retry_after, self.deadline, time.monotonic())
        if pause is None:
            raise failure from None
        return pause
