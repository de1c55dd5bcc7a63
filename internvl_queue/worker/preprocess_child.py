"""A preprocessing pool's child process: its limits first, then its processor.

The pool's initializer lives here, outside the ``engine`` package (whose ``__init__`` imports
torch): a spawned child unpickles the initializer by importing this module, which imports
neither torch nor transformers until ``init_preprocess_child`` has set the one-thread limits
(OpenMP, MKL and OpenBLAS read their thread counts once, when loaded).
"""

from __future__ import annotations

import os
from typing import Any

from .threads import SINGLE_THREAD_ENV, die_with_parent

__all__ = ["child_processor", "init_preprocess_child"]

_PROCESSOR: Any = None  # one per pool process


def init_preprocess_child(parent_pid: int, model_id: str) -> None:
    """Pool initializer of a preprocessing child: die with the worker, one thread, a processor."""
    die_with_parent(parent_pid)
    os.environ.update(SINGLE_THREAD_ENV)
    _load_processor(model_id)


def _load_processor(model_id: str) -> None:
    global _PROCESSOR
    import torch  # after the limits
    from transformers import AutoProcessor

    torch.set_num_threads(1)  # many of these run side by side
    _PROCESSOR = AutoProcessor.from_pretrained(model_id)


def child_processor() -> Any:
    """This child's processor (loaded by ``init_preprocess_child``)."""
    return _PROCESSOR
