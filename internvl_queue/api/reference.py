"""``/openapi.json`` (the API's OpenAPI 3.1 document) and ``/docs`` (the same, to read).

Neither needs an API key: they describe the API, they reveal no job. Both state the limits of
the service that answers (its ``Settings``).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .openapi import openapi_document
from .openapi.page import render_page
from .services import services

__all__ = ["reference"]

reference = Blueprint("reference", __name__)


@reference.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(openapi_document(services().settings))


@reference.get("/docs")
def docs() -> Response:
    page = render_page(openapi_document(services().settings))
    return Response(page, mimetype="text/html")
