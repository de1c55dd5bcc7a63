"""Ctrl-C and SIGTERM for the supervising commands (``up``, ``worker --gpus``).

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

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
