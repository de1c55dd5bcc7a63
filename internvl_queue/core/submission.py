"""Turn what a caller sent into a valid new ``Job``, or raise a ``ServiceError`` saying why not.

The API (multipart or JSON) and the command line both come through here, so the rules live in
one place. Cheap checks run first; images are decoded last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest, ValidationFailed
from .images import inspect_image
from .job import Job, JobParams
from .settings import Settings

__all__ = ["MAX_METADATA_BYTES", "Submission", "prepare_job"]

MAX_METADATA_BYTES = 4096


@dataclass(frozen=True)
class Submission:
    """A request as received: optional fields are raw (form strings or JSON values) or None."""

    question: Any
    images: list[bytes]
    max_new_tokens: Any = None
    max_tiles: Any = None
    timeout_s: Any = None
    metadata: Any = None


def prepare_job(submission: Submission, settings: Settings) -> Job:
    question = _question(submission.question, settings)
    params = JobParams(
        max_new_tokens=_bounded_int(
            "max_new_tokens",
            submission.max_new_tokens,
            default=settings.default_max_new_tokens,
            high=settings.max_new_tokens_limit,
        ),
        max_tiles=_bounded_int(
            "max_tiles", submission.max_tiles, default=settings.max_tiles, high=settings.max_tiles
        ),
        timeout_s=_bounded_int(
            "timeout_s",
            submission.timeout_s,
            default=settings.default_timeout_s,
            high=settings.max_timeout_s,
        ),
    )
    metadata = _metadata(submission.metadata)
    images = submission.images
    if not images:
        raise BadRequest("at least one image is required", code="missing_image")
    if len(images) > settings.max_images:
        raise ValidationFailed(
            f"{len(images)} images sent; at most {settings.max_images} per job",
            code="too_many_images",
        )
    for index, data in enumerate(images):
        inspect_image(data, max_pixels=settings.max_image_pixels, label=f"image {index + 1}")
    return Job.new(question, params, image_count=len(images), metadata=metadata)


def _question(raw: Any, settings: Settings) -> str:
    if raw is None:
        raise BadRequest("the field 'question' is required", code="missing_question")
    if not isinstance(raw, str) or not raw.strip():
        raise ValidationFailed("the question must be a non-empty string", code="invalid_question")
    if len(raw) > settings.max_question_chars:
        raise ValidationFailed(
            f"the question has {len(raw)} characters; at most {settings.max_question_chars}",
            code="invalid_question",
        )
    return raw


def _bounded_int(name: str, raw: Any, *, default: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and raw.strip().lstrip("+-").isdigit():
        value = int(raw)
    if value is None or not 1 <= value <= high:
        raise ValidationFailed(
            f"{name} must be an integer from 1 to {high}", code="invalid_parameter"
        )
    return value


def _metadata(raw: Any) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ValidationFailed(
                "metadata must be a JSON object", code="invalid_metadata"
            ) from None
    if not isinstance(raw, dict):
        raise ValidationFailed("metadata must be a JSON object", code="invalid_metadata")
    if len(json.dumps(raw).encode()) > MAX_METADATA_BYTES:
        raise ValidationFailed(
            f"metadata is larger than {MAX_METADATA_BYTES} bytes", code="invalid_metadata"
        )
    return raw
