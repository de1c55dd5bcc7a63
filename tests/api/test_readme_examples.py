"""The examples of README.md and docs/*.md name sample images that are shipped and that the API
accepts."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

from flask.testing import FlaskClient

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Every image path an example uses: curl's -F image=@PATH, base64 PATH, submit PATH.
EXAMPLE_IMAGE = re.compile(r"(?:image=@|base64 -w0 |internvl-queue submit )([\w./-]+\.(?:jpg|png))")


def test_every_image_the_docs_name_is_shipped_and_accepted(client: FlaskClient) -> None:
    paths = sorted({p for doc in DOCUMENTS for p in EXAMPLE_IMAGE.findall(doc.read_text())})
    # Both samples are used (the README's curl, docs/api.md's JSON and CLI examples), and only
    # files of examples/ are: a path a reader cannot find there would fail as typed.
    assert {"examples/cat.jpg", "examples/receipt.png"} <= set(paths)
    assert [p for p in paths if not p.startswith("examples/")] == []
    for path in paths:
        data = (ROOT / path).read_bytes()  # relative to the repository root, as written
        assert len(data) < 16_000, f"{path} should stay a small sample"
        upload = (io.BytesIO(data), Path(path).name)
        multipart = client.post("/v1/jobs", data={"question": "What is this?", "image": [upload]})
        assert multipart.status_code == 202, (path, multipart.json)
        body = {"question": "Read it.", "images": [{"data": base64.b64encode(data).decode()}]}
        assert client.post("/v1/jobs", json=body).status_code == 202, path
