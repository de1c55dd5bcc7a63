"""Read a submit request, multipart or JSON, into a core ``Submission`` (no validation here)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from flask import Request

from ..core.errors import BadRequest, UnsupportedMediaType, ValidationFailed
from ..core.submission import Submission

__all__ = ["parse_submission"]

_OPTIONAL = ("max_new_tokens", "max_tiles", "timeout_s", "metadata", "webhook_url")


def parse_submission(request: Request) -> Submission:
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return _from_form(request)
    if request.mimetype == "application/json":
        return _from_json(request)
    raise UnsupportedMediaType(
        "send multipart/form-data (image files + fields) or application/json "
        f"(base64 images), not {request.mimetype or 'a body without a content type'}",
    )


def _from_form(request: Request) -> Submission:
    images = [upload.read() for upload in request.files.getlist("image")]
    fields = {name: request.form.get(name) for name in _OPTIONAL}
    return Submission(
        question=request.form.get("question"),
        images=images,
        webhook_events=_form_events(request.form.getlist("webhook_events")),
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
                parsed = json.loads(value)
            except ValueError:
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
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    raw_images = body.get("images")
    if raw_images is None:
        raw_images = []
    if not isinstance(raw_images, list):
        raise BadRequest("'images' must be a list of {\"data\": ...} objects", code="invalid_json")
    images = [_image_data(item, index) for index, item in enumerate(raw_images)]
    fields = {name: body.get(name) for name in _OPTIONAL}
    return Submission(
        question=body.get("question"),
        images=images,
        webhook_events=body.get("webhook_events"),
        **fields,
    )


def _image_data(item: Any, index: int) -> bytes:
    data = item.get("data") if isinstance(item, dict) else None
    if not isinstance(data, str):
        raise BadRequest(
            f"images[{index}] must be an object with a 'data' string", code="invalid_json"
        )
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if not header.endswith(";base64"):
            raise BadRequest(f"images[{index}] data URL is not base64", code="invalid_base64")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"images[{index}] is not valid base64", code="invalid_base64") from None
