"""The batching engine: one thread owns the GPU and answers many jobs per forward pass.

Task threads prepare their own inputs (image decoding, tiling, tokenising: ``request``), hand them
to the ``Engine`` and wait on a future; the engine groups waiting requests into batches
(``batching``) and runs the vision tower, prefill and a greedy decode loop over them (``decoder``).
"""

from .config import EngineConfig
from .engine import Engine
from .request import EngineRequest, EngineResult, StopReason, prepare_request

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineRequest",
    "EngineResult",
    "StopReason",
    "prepare_request",
]
