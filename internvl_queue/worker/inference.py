"""Answering one job through the shared batching engine, from the job's own task thread.

The task has its input prepared (in the preprocessing pool on GPU workers) while the GPU works on
other batches, hands it to the engine and waits for its own result; the outcome becomes an
``Answer``, a ``JobFailure`` with a stable code, or ``WorkerDefunct`` when the engine died (the
job is then not at fault). Every wait is bounded by the job's deadline: a job past it ends
``timeout``, wherever it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..core.errors import (
    GpuOutOfMemory,
    InferenceError,
    JobCanceled,
    JobFailure,
    JobTimedOut,
    PromptTooLong,
)
from .answer import Answer, WorkerDefunct
from .engine import Engine, EngineDead, InvalidRequest, Preprocessor, StopReason, make_request
from .model import LoadedModel

__all__ = ["EngineAnswerer"]

# How long past its deadline a task waits for the engine before giving up on it (the engine
# looks at deadlines every few decode steps; only a stuck batch takes longer).
_GRACE_S = 30.0


class EngineAnswerer:
    def __init__(
        self,
        loaded: LoadedModel,
        engine: Engine,
        preprocessor: Preprocessor,
        *,
        grace_s: float = _GRACE_S,
    ) -> None:
        self.loaded = loaded
        self.engine = engine
        self.preprocessor = preprocessor
        self.grace_s = grace_s

    def __call__(
        self,
        images: list[bytes],
        question: str,
        *,
        max_new_tokens: int,
        max_tiles: int,
        deadline: float | None = None,
        is_canceled: Callable[[], bool] | None = None,
        priority: int = 1,
    ) -> Answer:
        if self.engine.dead is not None:
            raise WorkerDefunct(self.engine.dead)
        try:
            prepared = self.preprocessor(images, question, max_tiles=max_tiles, deadline=deadline)
        except JobFailure:
            raise
        except Exception as exc:
            raise InferenceError(f"could not prepare the model's input: {exc}") from None
        prompt_tokens = int(prepared.input_ids.shape[0])
        context = self.engine.context_tokens
        if prompt_tokens >= context:
            raise PromptTooLong(
                f"the prompt is {prompt_tokens} tokens (the question and "
                f"{int(prepared.pixel_values.shape[0])} image tile(s)) and the model's context is "
                f"{context}: shorten the question or lower max_tiles"
            )
        request = make_request(
            prepared,
            # The answer ends where the context does.
            max_new_tokens=min(max_new_tokens, context - prompt_tokens),
            deadline=deadline,
            is_canceled=is_canceled,
            priority=priority,
        )
        try:
            self.engine.submit(request)
        except InvalidRequest as exc:
            raise InferenceError(f"the model cannot take this job: {exc}") from None
        except EngineDead as exc:
            raise WorkerDefunct(str(exc)) from None
        wait = None if deadline is None else max(deadline - time.monotonic(), 0) + self.grace_s
        try:
            result = request.future.result(timeout=wait)
        except TimeoutError:
            raise JobTimedOut(
                "the job passed its deadline (timeout_s) and the model did not stop in time"
            ) from None
        except EngineDead as exc:
            raise WorkerDefunct(str(exc)) from None
        if result.stop is StopReason.TIMEOUT:
            raise JobTimedOut("the job passed its deadline (timeout_s) before it finished")
        if result.stop is StopReason.CANCELED:
            raise JobCanceled("the job was canceled")
        if result.stop is StopReason.OUT_OF_MEMORY:
            raise GpuOutOfMemory("the job does not fit in memory, even alone")
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
