"""Small helpers shared by the lifecycle API tests."""

from __future__ import annotations

import base64
from typing import Any

from tests.images import photo

JPEG = photo(64, 48, seed=1)


def json_body(question: str = "What is this?", **fields: Any) -> dict[str, Any]:
    return {"question": question, "images": [{"data": base64.b64encode(JPEG).decode()}], **fields}
