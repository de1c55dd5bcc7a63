"""webhook_url and webhook_events on submit: validated, and refused by the SSRF guard."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace

import pytest
from flask import Flask
from flask.testing import FlaskClient

from internvl_queue.core.settings import Settings
from tests.api.lifecycle_helpers import JPEG, json_body
from tests.core.ssrf_matrix import ACCEPTED, ROWS, Row

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def make_client(make_app: Callable[..., Flask], settings: Settings) -> Callable[..., FlaskClient]:
    """A test client of an API with a signing secret and the given setting changes."""

    def make(**changes: str) -> FlaskClient:
        return make_app(replace(settings, webhook_secrets=SECRET, **changes)).test_client()

    return make


def test_without_a_signing_secret_webhooks_are_refused(client) -> None:  # type: ignore[no-untyped-def]
    reply = client.post("/v1/jobs", json=json_body(webhook_url="https://example.com/hook"))
    assert reply.status_code == 422
    assert reply.json["error"]["code"] == "webhooks_not_configured"


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_the_ssrf_matrix_holds_at_submit(make_client: Callable[..., FlaskClient], row: Row) -> None:
    client = make_client(webhook_allowed_cidrs=row.allowed)
    reply = client.post("/v1/jobs", json=json_body(webhook_url=row.url))
    if row.outcome == ACCEPTED:
        assert reply.status_code == 202, reply.json
        assert reply.json["webhook"]["url"] == row.url
    else:
        assert reply.status_code == 422, reply.json
        assert reply.json["error"]["code"] == row.outcome
        assert row.says in reply.json["error"]["message"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://8.8.8.8/hook\r\n", "a control character (U+000D) at position 20; remove it"),
        ("http://8.8.8.8/my hook", "whitespace (U+0020) at position 18; percent-encode it"),
        ("http://8.8.8.8/caf\u00e9", "the non-ASCII character '\u00e9' (U+00E9) at position 19"),
        ("http://a..example/", "host 'a..example' is not a valid DNS name"),
    ],
)
def test_a_url_that_could_never_be_delivered_is_refused_in_forms_too(
    make_client: Callable[..., FlaskClient], url: str, says: str
) -> None:
    form = {"question": "q", "image": [(io.BytesIO(JPEG), "a.jpg")], "webhook_url": url}
    reply = make_client().post("/v1/jobs", data=form)
    assert reply.status_code == 422, reply.json
    assert reply.json["error"]["code"] == "webhook_url_invalid"
    assert says in reply.json["error"]["message"]


def test_a_host_that_does_not_resolve_is_refused(make_client: Callable[..., FlaskClient]) -> None:
    reply = make_client().post("/v1/jobs", json=json_body(webhook_url="http://no-such.invalid/"))
    assert reply.status_code == 422
    assert reply.json["error"]["code"] == "webhook_url_not_allowed"
    assert "does not resolve" in reply.json["error"]["message"]


def test_an_allowlisted_private_url_is_accepted_with_default_events(
    make_client: Callable[..., FlaskClient],
) -> None:
    client = make_client(webhook_allowed_cidrs="127.0.0.0/8")
    reply = client.post("/v1/jobs", json=json_body(webhook_url="http://127.0.0.1:9/hook"))
    assert reply.status_code == 202, reply.json
    assert reply.json["webhook"] == {
        "url": "http://127.0.0.1:9/hook",
        "events": ["job.succeeded", "job.failed", "job.canceled"],
    }


def test_events_can_be_chosen_in_json_and_in_forms(make_client: Callable[..., FlaskClient]) -> None:
    client = make_client(webhook_allowed_cidrs="127.0.0.0/8")
    url = "http://127.0.0.1:9/hook"
    body = json_body(webhook_url=url, webhook_events=["job.started", "job.failed"])
    assert client.post("/v1/jobs", json=body).json["webhook"]["events"] == [
        "job.started",
        "job.failed",
    ]
    form = {
        "question": "q",
        "image": [(io.BytesIO(JPEG), "a.jpg")],
        "webhook_url": url,
        "webhook_events": "job.succeeded,job.started",
    }
    assert client.post("/v1/jobs", data=form).json["webhook"]["events"] == [
        "job.started",
        "job.succeeded",
    ]


@pytest.mark.parametrize("events", [["job.done"], [], "job.succeeded,nope", [1]])
def test_unknown_events_are_refused(
    make_client: Callable[..., FlaskClient], events: object
) -> None:
    client = make_client(webhook_allowed_cidrs="127.0.0.0/8")
    body = json_body(webhook_url="http://127.0.0.1:9/hook", webhook_events=events)
    reply = client.post("/v1/jobs", json=body)
    assert reply.status_code == 422
    assert reply.json["error"]["code"] == "invalid_parameter"


def test_events_without_a_url_are_refused(make_client: Callable[..., FlaskClient]) -> None:
    reply = make_client().post("/v1/jobs", json=json_body(webhook_events=["job.failed"]))
    assert reply.status_code == 422


def _form(events: list[str]) -> dict[str, object]:
    return {
        "question": "q",
        "image": [(io.BytesIO(JPEG), "a.jpg")],
        "webhook_url": "http://127.0.0.1:9/hook",
        "webhook_events": events,
    }


@pytest.mark.parametrize(
    "fields",
    [
        ['["job.failed","job.started"]'],  # curl -F 'webhook_events=["job.failed","job.started"]'
        ['[ "job.failed", "job.started" ]'],
        ["job.failed", "job.started"],  # repeated fields
        ["job.failed, job.started"],  # comma-separated
        ['["job.failed"]', "job.started"],  # both at once
    ],
)
def test_form_events_may_be_a_json_list_repeated_or_comma_separated(
    make_client: Callable[..., FlaskClient], fields: list[str]
) -> None:
    client = make_client(webhook_allowed_cidrs="127.0.0.0/8")
    reply = client.post("/v1/jobs", data=_form(fields))
    assert reply.status_code == 202, reply.json
    assert reply.json["webhook"]["events"] == ["job.started", "job.failed"]


@pytest.mark.parametrize(
    ("fields", "unknown"),
    [
        (['["job.failed","job.done"]'], "'job.done'"),
        (["job.failed,nope"], "'nope'"),
        (["job.done"], "'job.done'"),
    ],
)
def test_an_unknown_form_event_is_named_with_the_allowed_ones(
    make_client: Callable[..., FlaskClient], fields: list[str], unknown: str
) -> None:
    client = make_client(webhook_allowed_cidrs="127.0.0.0/8")
    reply = client.post("/v1/jobs", data=_form(fields))
    assert reply.status_code == 422
    error = reply.json["error"]
    assert error["code"] == "invalid_parameter"
    assert error["message"] == (
        f"unknown webhook event {unknown}; webhook_events may name "
        "job.started, job.succeeded, job.failed, job.canceled"
    )


@pytest.mark.parametrize(
    ("field", "says"),
    [
        ('["job.failed",', "is not a valid JSON list"),
        ("[1, 2]", "some of job.started, job.succeeded, job.failed, job.canceled"),
    ],
)
def test_a_bad_json_list_in_a_form_is_refused_cleanly(
    make_client: Callable[..., FlaskClient], field: str, says: str
) -> None:
    client = make_client(webhook_allowed_cidrs="127.0.0.0/8")
    reply = client.post("/v1/jobs", data=_form([field]))
    assert reply.status_code == 422
    assert reply.json["error"]["code"] == "invalid_parameter"
    assert says in reply.json["error"]["message"]
