"""The API's OpenAPI 3.1 document, built from the code's own enums and the service's limits.

It is the contract the API is tested against (``tests/api/test_openapi_*.py``: the document is
valid OpenAPI 3.1, names every route and nothing else, and schemathesis checks the running API
against it), served at ``/openapi.json`` and rendered at ``/docs``.
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ...core.settings import Settings
from .paths import paths
from .schemas import components

__all__ = ["openapi_document"]

try:
    VERSION = version("internvl-queue")
except PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0.0.0"

_DESCRIPTION = """\
Asynchronous image questions: submit one or more images and a question, get a job id at once,
then poll (or long-poll, or receive a signed webhook) for the answer of an InternVL model.

Every error is `{"error": {"code", "message"}}` with a stable `code` (see `ErrorCode`). Besides
the statuses listed per operation, any request may get `404 not_found` or
`405 method_not_allowed` (a path or method the API does not have), `408 request_timeout`,
`414 request_line_too_long`, `431 request_headers_too_large`, `403 websocket_not_supported`
(a WebSocket handshake) or `501 not_implemented` from the HTTP layer, and `500 internal_error`
for a bug on the service's side.
"""


@functools.lru_cache(maxsize=4)
def openapi_document(settings: Settings) -> dict[str, Any]:
    """The document for a service running with ``settings`` (cached: settings are frozen).

    Callers must not change what they get: it is shared."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "internvl-queue",
            "version": VERSION,
            "summary": "Asynchronous image-question service (InternVL on GPU workers)",
            "description": _DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "jobs", "description": "Submit, read, cancel jobs; their webhook log."},
            {"name": "batches", "description": "Many jobs in one request; their results."},
            {"name": "operations", "description": "Health, readiness and metrics."},
            {"name": "reference", "description": "This document."},
            {"name": "web", "description": "The page a person uses."},
        ],
        "paths": paths(),
        "components": components(settings),
    }
