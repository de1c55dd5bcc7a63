"""The OpenAPI document: valid OpenAPI 3.1, one entry per route (no more, no fewer), every error
code the code raises and no other, examples that the schemas and the API accept; served at
``/openapi.json`` and rendered at ``/docs`` without an API key.

schemathesis checks the running API against the same document: test_openapi_contract.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource

from internvl_queue.api.openapi import openapi_document
from internvl_queue.api.openapi.codes import ERROR_CODES, JOB_ERROR_CODES
from internvl_queue.core.settings import Settings
from tests.api.test_openapi_contract import ADDED_BY_OTHER_BRANCHES

PACKAGE = Path(__file__).resolve().parents[2] / "internvl_queue"
# Flask answers these for every route itself (HEAD as GET without a body, OPTIONS with Allow).
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
OPERATOR_LIMITS = Settings(
    max_images=2, max_new_tokens_limit=8, default_max_new_tokens=8, max_timeout_s=1800
)


@pytest.mark.parametrize(
    "settings",
    [Settings(), OPERATOR_LIMITS],
    ids=["defaults", "an operator's limits"],
)
def test_the_document_is_valid_openapi_3_1(settings: Settings) -> None:
    document = openapi_document(settings)
    validate(document, cls=OpenAPIV31SpecValidator)
    assert document["openapi"] == "3.1.0"


def test_the_document_states_the_service_limits() -> None:
    fields = openapi_document(OPERATOR_LIMITS)["components"]["schemas"]["SubmitJson"]["properties"]
    assert fields["images"]["maxItems"] == 2
    assert fields["max_new_tokens"]["maximum"] == 8
    assert fields["timeout_s"]["maximum"] == 1800


def _routes(app: Flask) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[-1] == "static":  # the web page's files, not operations
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        found |= {
            (path, method.lower())
            for method in rule.methods or ()
            if method not in IMPLICIT_METHODS
        }
    return found


def test_every_route_is_documented_and_every_documented_operation_is_a_route(app: Flask) -> None:
    routes = _routes(app)
    documented = {
        (path, method)
        for path, operations in openapi_document(Settings())["paths"].items()
        for method in operations
    }
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    pending = {(path, method) for path, method in documented if path in ADDED_BY_OTHER_BRANCHES}
    assert documented - routes - pending == set(), "documented operations that are no route"


# Where the code writes an error code: an argument, a class default, a literal error object, the
# tables of the HTTP layer's refusals, and their fallbacks.
_CODE_SITES = [
    r'\bcode="([a-z0-9_]+)"',
    r'default_code = "([a-z0-9_]+)"',
    r'"code": "([a-z0-9_]+)"',
    r'\b\d{3}: \(?\s*"([a-z0-9_]+)"',
    r'(?:_Refused|error_response|_error_reply)\(\s*\d{3},\s*"([a-z0-9_]+)"',
    r'\.get\(status, \(?"([a-z0-9_]+)"',
    r'code, advice = "([a-z0-9_]+)"',
]


def _codes_in_the_code() -> set[str]:
    found: set[str] = set()
    for source in PACKAGE.rglob("*.py"):
        if "openapi" in source.relative_to(PACKAGE).parts:  # the list itself
            continue
        text = source.read_text()
        for site in _CODE_SITES:
            found |= set(re.findall(site, text))
    return found


def test_the_listed_codes_are_exactly_those_the_code_raises() -> None:
    raised = _codes_in_the_code()
    listed = set(ERROR_CODES) | set(JOB_ERROR_CODES)
    assert raised - listed == set(), "codes raised but missing from api/openapi/codes.py"
    assert listed - raised == set(), "codes listed in api/openapi/codes.py that nothing raises"


def _validator(document: dict[str, Any]) -> Callable[[dict[str, Any]], jsonschema.Validator]:
    registry: Registry[Any] = Registry().with_resource("urn:spec", Resource.opaque(document))

    def build(schema: dict[str, Any]) -> jsonschema.Validator:
        rooted = _rooted(schema)
        return jsonschema.Draft202012Validator(rooted, registry=registry)

    return build


def _rooted(node: Any) -> Any:
    """``node`` with its local ``$ref``s pointing into the registered document."""
    if isinstance(node, dict):
        return {
            key: f"urn:spec{value}" if key == "$ref" else _rooted(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rooted(item) for item in node]
    return node


def test_every_example_matches_its_schema() -> None:
    document = openapi_document(Settings())
    build = _validator(document)
    schemas = document["components"]["schemas"]
    checked = 0
    for schema in schemas.values():
        if "example" in schema:
            build(schema).validate(schema["example"])
            checked += 1
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    for example in body["examples"].values():
        build(body["schema"]).validate(example["value"])
        checked += 1
    assert checked >= 4


def test_the_json_examples_are_accepted(client: FlaskClient) -> None:
    body = openapi_document(Settings())["paths"]["/v1/jobs"]["post"]["requestBody"]
    for name, example in body["content"]["application/json"]["examples"].items():
        reply = client.post("/v1/jobs", json=example["value"])
        assert reply.status_code == 202, (name, reply.json)


def test_the_document_and_its_page_need_no_key(
    settings: Settings, make_app: Callable[..., Flask]
) -> None:
    from dataclasses import replace

    locked = replace(settings, auth="required")
    client = make_app(locked).test_client()
    assert client.get("/v1/jobs/0").status_code == 401  # no key exists: /v1/ is closed
    served = client.get("/openapi.json")
    assert served.status_code == 200
    assert served.json == openapi_document(locked)
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for path in openapi_document(locked)["paths"]:
        assert f"<code>{path}</code>" in html
    for code in ERROR_CODES:
        assert f"<code>{code}</code>" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_a_405_names_the_methods_the_path_takes(client: FlaskClient) -> None:
    reply = client.put("/v1/jobs")
    assert reply.status_code == 405
    assert reply.json["error"]["code"] == "method_not_allowed"
    assert "POST" in reply.headers["Allow"]


def test_a_json_integer_written_with_a_zero_fraction_is_that_integer(
    client: FlaskClient,
) -> None:
    body = openapi_document(Settings())["components"]["schemas"]["SubmitJson"]["example"]
    reply = client.post("/v1/jobs", json={**body, "max_new_tokens": 7.0})
    assert reply.status_code == 202, reply.json
    assert reply.json["params"]["max_new_tokens"] == 7
    refused = client.post("/v1/jobs", json={**body, "max_new_tokens": 7.5})
    assert refused.status_code == 422
    assert refused.json["error"]["code"] == "invalid_parameter"
