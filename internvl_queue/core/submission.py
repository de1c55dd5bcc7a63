"""Turn what a caller sent into a valid new ``Job``, or raise a ``ServiceError`` saying why not.

The API (multipart or JSON) and the command line both come through here, so the rules live in
one place. Cheap checks run first; images are decoded last.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Any

from . import result_cache, strict_json
from .errors import BadRequest, ValidationFailed
from .image_urls import ImageUrl
from .images import check_total_pixels, inspect_image
from .job import Job, JobParams
from .priority import parse_priority
from .settings import Settings
from .webhook_events import DEFAULT_EVENTS, EVENT_TYPES
from .webhook_url import check_webhook_url

__all__ = [
    "MAX_METADATA_BYTES",
    "Submission",
    "check_metadata",
    "check_webhook_target",
    "describe_job",
    "max_question_bytes",
    "prepare_job",
]

MAX_METADATA_BYTES = 4096
# The API's cheap bound on a question: UTF-8 bytes per allowed token (see max_question_bytes).
BYTES_PER_QUESTION_TOKEN = 4


@dataclass(frozen=True)
class Submission:
    """A request as received: optional fields are raw (form strings or JSON values) or None.

    ``images`` may name some by URL: ``ImageFetcher.fetch`` replaces those with their bytes
    before ``prepare_job``, which takes bytes only."""

    question: Any
    images: list[bytes | ImageUrl]
    max_new_tokens: Any = None
    max_tiles: Any = None
    timeout_s: Any = None
    metadata: Any = None
    webhook_url: Any = None
    webhook_events: Any = None
    priority: Any = None
    cache: Any = None  # false: neither answered from the result cache nor kept in it


def describe_job(submission: Submission, settings: Settings, *, owner: str = "") -> Job:
    """The job ``submission`` asks for, every field validated but its images' content (they
    may still be URLs): what a submit's Idempotency-Key fingerprint is taken from, so that a
    retry can find its job before fetching image URLs again."""
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
    priority = parse_priority(submission.priority)
    webhook_url, webhook_events = _webhook(submission, settings)
    _use_cache(submission)  # refused here if malformed, like every other field
    if not submission.images:
        raise BadRequest("at least one image is required", code="missing_image")
    if len(submission.images) > settings.max_images:
        raise ValidationFailed(
            f"{len(submission.images)} images sent; at most {settings.max_images} per job",
            code="too_many_images",
        )
    return Job.new(
        question,
        params,
        image_count=len(submission.images),
        metadata=metadata,
        owner=owner,
        webhook_url=webhook_url,
        webhook_events=webhook_events,
        queue=settings.queue_name,
        priority=priority,
    )


def prepare_job(submission: Submission, settings: Settings, *, owner: str = "") -> Job:
    """The new job ``submission`` asks for, validated whole: its images are bytes (URLs fetched
    first) and each is decoded and measured."""
    job = describe_job(submission, settings, owner=owner)
    images = _bytes_only(submission.images)
    infos = [
        inspect_image(data, max_pixels=settings.max_image_pixels, label=f"image {index + 1}")
        for index, data in enumerate(images)
    ]
    check_total_pixels(infos, settings.max_request_pixels)
    if not _use_cache(submission) or settings.result_cache_ttl_s <= 0:
        return job
    scope = None if settings.result_cache_shared else owner
    found = result_cache.digest(images, job.question, job.params, scope=scope)
    return replace(job, cache_digest=found or "")


def _use_cache(submission: Submission) -> bool:
    return _flag("cache", submission.cache, default=True)


def _flag(name: str, raw: Any, *, default: bool) -> bool:
    """A boolean field: JSON true/false, or a form's text true/false (as the OpenAPI document
    says a form writes a boolean; not 1/0 or yes/no)."""
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    if raw in ("true", "false"):
        return bool(raw == "true")
    raise ValidationFailed(f"{name} must be true or false", code="invalid_parameter")


def _bytes_only(images: list[bytes | ImageUrl]) -> list[bytes]:
    found = [image for image in images if isinstance(image, bytes)]
    if len(found) != len(images):
        raise TypeError("fetch a submission's image URLs (ImageFetcher.fetch) before prepare_job")
    return found


def check_webhook_target(url: Any, settings: Settings) -> str | None:
    """A webhook_url checked as a job's is (a batch's own webhook): the URL, or None for none."""
    return _webhook(Submission(question=None, images=[], webhook_url=url), settings)[0]


def check_metadata(raw: Any) -> dict[str, Any] | None:
    """Metadata checked as a job's is (a batch's own metadata)."""
    return _metadata(raw)


def _webhook(submission: Submission, settings: Settings) -> tuple[str | None, tuple[str, ...]]:
    url, events = submission.webhook_url, submission.webhook_events
    if url is None or url == "":
        if events not in (None, "", []):
            raise ValidationFailed("webhook_events needs a webhook_url", code="invalid_parameter")
        return None, ()
    if not isinstance(url, str):
        raise ValidationFailed("webhook_url must be a string", code="webhook_url_not_allowed")
    if not settings.webhook_secret_list:
        raise ValidationFailed(
            "this service has no webhook signing secret (WEBHOOK_SECRETS), so it sends no "
            "webhooks; poll the job instead",
            code="webhooks_not_configured",
        )
    chosen: tuple[str, ...] = DEFAULT_EVENTS
    if events not in (None, ""):
        names = events.split(",") if isinstance(events, str) else events
        allowed = ", ".join(EVENT_TYPES)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValidationFailed(
                "webhook_events must be a list (or comma-separated string) of event names, "
                f"some of {allowed}",
                code="invalid_parameter",
            )
        wanted = {n.strip() for n in names if n.strip()}
        unknown = sorted(wanted - set(EVENT_TYPES))
        if unknown:
            raise ValidationFailed(
                f"unknown webhook event{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(n) for n in unknown)}; webhook_events may name {allowed}",
                code="invalid_parameter",
            )
        if not wanted:
            raise ValidationFailed(
                f"webhook_events names no event; name some of {allowed}, or leave it out "
                "for the terminal ones",
                code="invalid_parameter",
            )
        chosen = tuple(kind for kind in EVENT_TYPES if kind in wanted)
    return check_webhook_url(url, settings.webhook_allowed_networks), chosen


def _question(raw: Any, settings: Settings) -> str:
    if raw is None:
        raise BadRequest("the field 'question' is required", code="missing_question")
    if not isinstance(raw, str) or not raw.strip():
        raise ValidationFailed("the question must be a non-empty string", code="invalid_question")
    if len(raw) > settings.max_question_chars:
        raise BadRequest(
            f"the question has {len(raw)} characters; at most {settings.max_question_chars}: "
            "shorten it",
            code="question_too_long",
        )
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): not text we can store
        raise ValidationFailed(
            "the question is not valid Unicode text (it holds a lone surrogate)",
            code="invalid_question",
        ) from None
    limit = max_question_bytes(settings)
    if size > limit:
        raise BadRequest(
            f"the question is {size} bytes of UTF-8, more than the {limit} allowed for "
            f"{settings.max_question_tokens} tokens: shorten it",
            code="question_too_long",
        )
    if not _has_visible_character(raw):
        raise ValidationFailed(
            "the question has no visible character (only spaces, control or invisible "
            "formatting characters such as U+200B): write the question in words",
            code="invalid_question",
        )
    return raw


# Characters that show nothing: controls (Cc), format characters (Cf: zero-width space and
# joiners, U+FEFF, bidirectional marks, tag characters), separators (Z*: spaces, line and
# paragraph separators) and unassigned code points (Cn). (A lone surrogate is refused before
# this check, with its own message.)
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cn", "Zs", "Zl", "Zp"})
# Unicode's other default-ignorable code points (DerivedCoreProperties.txt), outside those
# categories: a combining grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian
# and other variation selectors. Each renders as nothing.
_IGNORABLE_RANGES = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xE0100, 0xE01EF),
)


def _has_visible_character(text: str) -> bool:
    """Whether ``text`` holds a character that shows: one rule for every way a question comes
    in (JSON or form), so that a question of zero-width spaces is refused like one of spaces."""
    return any(_visible(char) for char in text)


def _visible(char: str) -> bool:
    if char.isspace() or unicodedata.category(char) in _INVISIBLE_CATEGORIES:
        return False
    code = ord(char)
    return not any(low <= code <= high for low, high in _IGNORABLE_RANGES)


def max_question_bytes(settings: Settings) -> int:
    """The most UTF-8 bytes a question may have, checked here without a tokenizer.

    A byte-level BPE token covers at least one byte, so bytes can only prove a question short
    enough, never too long; the worker counts exact tokens before a job joins a batch
    (``prompt_too_long``). This bound refuses at once what is almost surely over
    ``max_question_tokens``: natural text averages 1.5 to 4.5 bytes per token (English about 4,
    CJK 2 to 4.5), and an emoji is 4 bytes and at least one token.
    """
    return BYTES_PER_QUESTION_TOKEN * settings.max_question_tokens


# Integers as a caller may write them: ASCII digits only (str.isdigit() also takes "²" and
# "١٢", which int() then refuses), and short enough that int() never meets its digit limit.
_INTEGER = re.compile(r"\s*[+-]?[0-9]{1,18}\s*", re.ASCII)


def _bounded_int(name: str, raw: Any, *, default: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, float) and raw.is_integer() and abs(raw) < 1e18:
        # JSON has one number type: 7.0 is the integer 7 (as JSON Schema counts it), though
        # Python's json reads it as a float.
        value = int(raw)
    elif isinstance(raw, str) and _INTEGER.fullmatch(raw):
        value = int(raw)
    if value is None or not 1 <= value <= high:
        raise ValidationFailed(
            f"{name} must be an integer from 1 to {high}", code="invalid_parameter"
        )
    return value


def _metadata(raw: Any) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    try:
        if isinstance(raw, str):
            raw = strict_json.loads(raw)
        else:  # already parsed (a JSON body): may still hold NaN/Infinity
            strict_json.check(raw)
    except strict_json.NotStrictJson as exc:
        raise BadRequest(
            f"metadata must be a strict JSON object, but {exc}", code="invalid_metadata"
        ) from None
    if not isinstance(raw, dict):
        raise ValidationFailed("metadata must be a JSON object", code="invalid_metadata")
    if len(json.dumps(raw).encode()) > MAX_METADATA_BYTES:
        raise ValidationFailed(
            f"metadata is larger than {MAX_METADATA_BYTES} bytes", code="invalid_metadata"
        )
    return raw
