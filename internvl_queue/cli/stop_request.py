"""Ctrl-C, SIGTERM and SIGHUP for the supervising commands (``up``, ``worker --gpus``).

The handler only records the request: the supervisor's loop sees it and stops its children in
order, instead of being interrupted halfway through starting or stopping one.
"""

from __future__ import annotations

import signal
from types import FrameType

__all__ = ["StopRequest"]


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._request)
        signal.signal(signal.SIGTERM, self._request)
        # A closed terminal: stop in order too (the children, in sessions of their own, get no
        # SIGHUP; without this handler they would still die with us, but unordered).
        signal.signal(signal.SIGHUP, self._request)

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
