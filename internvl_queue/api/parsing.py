"""Read a submit request, multipart or JSON, into a core ``Submission`` (no validation here).

Images come as bytes (files, base64) or by URL (``{"url": ...}`` in JSON, ``image_url`` form
fields), which the view has fetched (``core/image_urls``) before it validates the submission.

Both paths read text the same way: UTF-8 or refused (``400 invalid_utf8``), never repaired.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from flask import Request

from ..core import strict_json
from ..core.errors import BadRequest, UnsupportedMediaType, ValidationFailed
from ..core.image_urls import ImageUrl
from ..core.submission import Submission
from .form_body import not_utf8, read_form

__all__ = ["parse_submission", "submission_from_object"]

_OPTIONAL = (
    "max_new_tokens",
    "max_tiles",
    "timeout_s",
    "metadata",
    "webhook_url",
    "priority",
    "cache",
)


def parse_submission(request: Request) -> Submission:
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return _from_form(request)
    if request.mimetype == "application/json":
        return _from_json(request)
    raise UnsupportedMediaType(
        "send multipart/form-data (image files or image_url fields + fields) or "
        "application/json (base64 or URL images), not "
        f"{request.mimetype or 'a body without a content type'}",
    )


def _from_form(request: Request) -> Submission:
    form = read_form(request.get_data(cache=False), request.mimetype, request.mimetype_params)
    fields = {name: form.fields.get(name) for name in _OPTIONAL}
    # Files first, then URLs, each in the order sent. Blank URL fields (an empty form input) name
    # nothing.
    urls = [url for url in form.fields.getlist("image_url") if url.strip()]
    images: list[bytes | ImageUrl] = [*form.files.getlist("image")]
    images += [ImageUrl(url, f"image_url[{index}]") for index, url in enumerate(urls)]
    return Submission(
        question=form.fields.get("question"),
        images=images,
        webhook_events=_form_events(form.fields.getlist("webhook_events")),
        **fields,
    )


def _form_events(values: list[str]) -> list[Any] | None:
    """Event names from ``webhook_events`` form fields, each a comma-separated list or a JSON
    list (``["job.failed", "job.started"]``), repeated or not; None when there are none.

    Names are not checked here: ``prepare_job`` does it, the same for forms and JSON bodies.
    """
    names: list[Any] = []
    for value in values:
        if value.lstrip().startswith("["):
            try:
                parsed = strict_json.loads(value)
            except ValueError:  # NotStrictJson too
                raise ValidationFailed(
                    f"webhook_events {value!r} is not a valid JSON list; send e.g. "
                    '["job.failed", "job.started"] or job.failed,job.started',
                    code="invalid_parameter",
                ) from None
            names.extend(parsed if isinstance(parsed, list) else [parsed])
        else:
            names.extend(value.split(","))
    # Blank entries (an empty field, a trailing comma) name nothing.
    names = [n for n in names if not (isinstance(n, str) and not n.strip())]
    return names or None


def _from_json(request: Request) -> Submission:
    data = request.get_data(cache=False)
    try:
        # RFC 8259 section 8.1: JSON exchanged between systems is UTF-8 (Python's json would also
        # take UTF-16 and UTF-32). A leading byte order mark is ignored, as that section allows.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise not_utf8("the JSON body", exc) from None
    try:
        body = strict_json.parse(text)
    except strict_json.NotStrictJson as exc:
        raise BadRequest(
            f"the body must be a strict JSON object, but {exc}", code="invalid_json"
        ) from None
    return submission_from_object(body)


def submission_from_object(body: Any, what: str = "the body") -> Submission:
    """A parsed JSON submit (a job's body, or one line of a batch) as a ``Submission``."""
    try:
        if not isinstance(body, dict):
            raise strict_json.NotStrictJson("it is not an object")
        for name, value in body.items():
            if name != "metadata":  # metadata gets its own code (invalid_metadata), in the core
                strict_json.check(value, max_depth=strict_json.MAX_DEPTH - 1)
    except strict_json.NotStrictJson as exc:
        raise BadRequest(
            f"{what} must be a strict JSON object, but {exc}", code="invalid_json"
        ) from None
    raw_images = body.get("images")
    if raw_images is None:
        raw_images = []
    if not isinstance(raw_images, list):
        raise BadRequest(
            '\'images\' must be a list of {"data": ...} or {"url": ...} objects',
            code="invalid_json",
        )
    images = [_image(item, index) for index, item in enumerate(raw_images)]
    fields = {name: body.get(name) for name in _OPTIONAL}
    return Submission(
        question=body.get("question"),
        images=images,
        webhook_events=body.get("webhook_events"),
        **fields,
    )


def _image(item: Any, index: int) -> bytes | ImageUrl:
    if isinstance(item, dict) and "url" in item:
        url = item["url"]
        if "data" in item:
            raise BadRequest(
                f"images[{index}] has both 'data' and 'url'; send one of them",
                code="invalid_json",
            )
        if not isinstance(url, str):
            raise BadRequest(f"images[{index}].url must be a string", code="invalid_json")
        return ImageUrl(url, f"images[{index}].url")
    data = item.get("data") if isinstance(item, dict) else None
    if not isinstance(data, str):
        raise BadRequest(
            f"images[{index}] must be an object with a 'data' (base64) or a 'url' string",
            code="invalid_json",
        )
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if not header.endswith(";base64"):
            raise BadRequest(f"images[{index}] data URL is not base64", code="invalid_base64")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"images[{index}] is not valid base64", code="invalid_base64") from None
