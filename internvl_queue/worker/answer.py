"""What answering one job gives back, and the shape of the function that answers it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Answer", "AnswerFn", "WorkerDefunct"]


class WorkerDefunct(Exception):
    """Raised by an ``AnswerFn`` when this worker can answer no job any more (its GPU failed for
    good, or hangs): the job is not at fault and goes back to the queue; the worker exits."""


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    image_tiles: int
    preprocess_ms: float
    inference_ms: float
    batch_size: int = 1


# (image bytes, question, *, max_new_tokens, max_tiles, deadline, is_canceled, priority: the
# job's priority rank, 0 the highest) -> Answer, raising
# a JobFailure for a job that cannot be answered, WorkerDefunct when no job can be. The batching
# engine in production; a named fake in tests.
AnswerFn = Callable[..., Answer]
