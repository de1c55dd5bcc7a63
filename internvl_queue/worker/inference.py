"""Answering one job through the shared batching engine, from the job's own task thread.

The task has its input prepared (in the preprocessing pool on GPU workers) while the GPU works on
other batches, hands it to the engine and waits for its own result; the outcome becomes an
``Answer`` or a ``JobFailure`` with a stable code.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..core.errors import GpuOutOfMemory, InferenceError, JobCanceled, JobFailure, JobTimedOut
from .answer import Answer
from .engine import Engine, Preprocessor, StopReason, make_request
from .model import LoadedModel

__all__ = ["EngineAnswerer"]

# How long past its deadline a task waits for the engine before giving up on it.
_GRACE_S = 30.0


class EngineAnswerer:
    def __init__(self, loaded: LoadedModel, engine: Engine, preprocessor: Preprocessor) -> None:
        self.loaded = loaded
        self.engine = engine
        self.preprocessor = preprocessor

    def __call__(
        self,
        images: list[bytes],
        question: str,
        *,
        max_new_tokens: int,
        max_tiles: int,
        deadline: float | None = None,
        is_canceled: Callable[[], bool] | None = None,
    ) -> Answer:
        try:
            prepared = self.preprocessor(images, question, max_tiles=max_tiles)
        except JobFailure:
            raise
        except Exception as exc:
            raise InferenceError(f"could not prepare the model's input: {exc}") from None
        request = self.engine.submit(
            make_request(
                prepared, max_new_tokens=max_new_tokens, deadline=deadline, is_canceled=is_canceled
            )
        )
        wait = None if deadline is None else max(deadline - time.monotonic(), 0) + _GRACE_S
        result = request.future.result(timeout=wait)
        if result.stop is StopReason.TIMEOUT:
            raise JobTimedOut("the job passed its deadline (timeout_s) before it finished")
        if result.stop is StopReason.CANCELED:
            raise JobCanceled("the job was canceled")
        if result.stop is StopReason.OUT_OF_MEMORY:
            raise GpuOutOfMemory("the job does not fit in GPU memory, even alone")
        if result.stop is StopReason.ERROR:
            raise InferenceError(f"the model failed on this job: {result.error}")
        text = self.loaded.processor.decode(result.tokens, skip_special_tokens=True).strip()
        return Answer(
            text=text,
            prompt_tokens=request.prompt_tokens,
            completion_tokens=len(result.tokens),
            image_tiles=request.tiles,
            preprocess_ms=prepared.preprocess_ms,
            inference_ms=result.inference_ms,
            batch_size=result.batch_size,
        )
