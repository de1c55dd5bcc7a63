"""The batching engine: one thread owns the GPU and answers many jobs per forward pass.

Task threads have their inputs prepared (image decoding, tiling, tokenising: ``preprocess``, in
a process pool on GPU workers), hand them to the ``Engine`` and wait on a future; the engine
groups waiting requests into batches (``batching``) and runs the vision tower, prefill and a
greedy decode loop over them (``decoder``, with ``attention`` for the decode steps).
"""

from .config import EngineConfig
from .engine import Engine, EngineDead, InvalidRequest
from .preprocess import Prepared, Preprocessor, default_processes
from .request import EngineRequest, EngineResult, StopReason, make_request

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineDead",
    "EngineRequest",
    "EngineResult",
    "InvalidRequest",
    "Prepared",
    "Preprocessor",
    "StopReason",
    "default_processes",
    "make_request",
]
