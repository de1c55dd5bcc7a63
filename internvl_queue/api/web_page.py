"""``GET /``: the web page a person uses to ask about images, served with its script and styles.

The page is three static files (``page/``: HTML, JS, CSS; no build step, nothing loaded from
elsewhere) that talk to the public API like any other client: ``POST /v1/jobs``, then long polls
on ``GET /v1/jobs/<id>?wait=N``, and cancel. Neither the page nor its files need an API key (they
hold no data; ``auth.py`` guards ``/v1/`` only): the person types a key into the page, which keeps
it in the tab's ``sessionStorage`` and sends it as ``Authorization: Bearer``.

Every reply from here carries a strict Content-Security-Policy: the page's own script, styles and
the API on the same origin, no inline code, no framing.
"""

from __future__ import annotations

from flask import Blueprint, Response

__all__ = ["CONTENT_SECURITY_POLICY", "web_page"]

# blob: and data: images are the previews of the chosen files (object URLs) and the empty
# favicon; nothing else may come from anywhere but this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)

web_page = Blueprint(
    "web_page", __name__, static_folder="page", static_url_path="/page", url_prefix=""
)


@web_page.get("/")
def index() -> Response:
    return web_page.send_static_file("index.html")


@web_page.after_request
def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
