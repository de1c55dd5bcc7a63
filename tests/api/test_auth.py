"""Bearer API keys on /v1/, against a real Redis; keys are made with the real store."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import pytest
import redis
from flask import Flask, jsonify
from flask.testing import FlaskClient

from internvl_queue.api.auth import current_owner
from internvl_queue.cli.redis_server import free_port
from internvl_queue.core.apikeys import ApiKeyStore
from internvl_queue.core.settings import Settings
from tests.conftest import user_keys

UNKNOWN_JOB = "/v1/jobs/0123456789abcdef"


@pytest.fixture
def keys(redis_client: redis.Redis) -> ApiKeyStore:
    return ApiKeyStore(redis_client)


@pytest.fixture
def whoami_client(app: Flask) -> FlaskClient:
    """The app with one extra /v1/ view that reports ``current_owner()``."""
    app.add_url_rule("/v1/_whoami", "whoami", lambda: jsonify({"owner": current_owner()}))
    return app.test_client()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_unauthorized(reply, says: str) -> None:  # type: ignore[no-untyped-def]
    assert reply.status_code == 401, reply.json
    assert reply.json["error"]["code"] == "unauthorized"
    assert says in reply.json["error"]["message"]
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


# -- open mode --------------------------------------------------------------------------------


def test_open_mode_needs_no_key(client: FlaskClient) -> None:
    reply = client.get(UNKNOWN_JOB)
    assert reply.status_code == 404 and reply.json["error"]["code"] == "job_not_found"
    assert client.get("/readyz").json["auth"] == "open"


def test_open_mode_owner_is_empty(whoami_client: FlaskClient) -> None:
    assert whoami_client.get("/v1/_whoami").json == {"owner": ""}


def test_revoking_the_last_key_reopens_the_api(client: FlaskClient, keys: ApiKeyStore) -> None:
    key, _ = keys.create("only")
    assert client.get(UNKNOWN_JOB).status_code == 401
    keys.revoke(key.id)
    assert client.get(UNKNOWN_JOB).status_code == 404
    assert client.get("/readyz").json["auth"] == "open"


def test_an_open_api_warns_at_start(
    make_app: Callable[..., Flask], settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="internvl_queue.api.auth"):
        make_app(settings)
    [record] = [r for r in caplog.records if r.name == "internvl_queue.api.auth"]
    assert record.levelno == logging.WARNING
    assert "OPEN TO ANYONE" in record.getMessage()
    assert "internvl-queue keys create --name" in record.getMessage()


def test_no_warning_once_a_key_exists(
    make_app: Callable[..., Flask],
    settings: Settings,
    keys: ApiKeyStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys.create("k")
    with caplog.at_level(logging.WARNING, logger="internvl_queue.api.auth"):
        make_app(settings)
    assert [r for r in caplog.records if r.name == "internvl_queue.api.auth"] == []


# -- keys required ----------------------------------------------------------------------------


def test_a_key_made_after_start_takes_effect_at_once(
    client: FlaskClient, keys: ApiKeyStore
) -> None:
    assert client.get(UNKNOWN_JOB).status_code == 404  # open
    keys.create("new")
    assert_unauthorized(client.get(UNKNOWN_JOB), "requires an API key")
    assert client.get("/readyz").json["auth"] == "api_keys"


def test_a_valid_key_reaches_the_view(whoami_client: FlaskClient, keys: ApiKeyStore) -> None:
    key, plaintext = keys.create("good")
    reply = whoami_client.get(UNKNOWN_JOB, headers=bearer(plaintext))
    assert reply.status_code == 404 and reply.json["error"]["code"] == "job_not_found"
    assert whoami_client.get("/v1/_whoami", headers=bearer(plaintext)).json == {"owner": key.id}
    # The scheme is case-insensitive (RFC 7235).
    lower = whoami_client.get("/v1/_whoami", headers={"Authorization": f"bearer {plaintext}"})
    assert lower.json == {"owner": key.id}


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token iq_0123456789ab_x", "iq_0123456789ab_x"],
)
def test_a_malformed_header_is_refused(client: FlaskClient, keys: ApiKeyStore, header: str) -> None:
    keys.create("k")
    assert_unauthorized(
        client.get(UNKNOWN_JOB, headers={"Authorization": header}), "malformed Authorization"
    )


def test_a_malformed_key_is_refused(client: FlaskClient, keys: ApiKeyStore) -> None:
    keys.create("k")
    assert_unauthorized(client.get(UNKNOWN_JOB, headers=bearer("hunter2")), "malformed API key")


def test_an_unknown_key_is_refused(client: FlaskClient, keys: ApiKeyStore) -> None:
    key, plaintext = keys.create("k")
    other_id = "0" * 12 if key.id != "0" * 12 else "1" * 12
    forged = plaintext.replace(key.id, other_id)
    assert_unauthorized(client.get(UNKNOWN_JOB, headers=bearer(forged)), "unknown or revoked")
    wrong_secret = plaintext[:-4] + ("AAAA" if not plaintext.endswith("AAAA") else "BBBB")
    assert_unauthorized(client.get(UNKNOWN_JOB, headers=bearer(wrong_secret)), "unknown or revoked")


def test_a_revoked_key_is_refused_and_others_still_work(
    client: FlaskClient, keys: ApiKeyStore
) -> None:
    leaked, leaked_plaintext = keys.create("leaked")
    _, kept_plaintext = keys.create("kept")
    assert client.get(UNKNOWN_JOB, headers=bearer(leaked_plaintext)).status_code == 404
    keys.revoke(leaked.id)
    assert_unauthorized(
        client.get(UNKNOWN_JOB, headers=bearer(leaked_plaintext)), "unknown or revoked"
    )
    assert client.get(UNKNOWN_JOB, headers=bearer(kept_plaintext)).status_code == 404


def test_a_refused_submit_stores_nothing(
    client: FlaskClient, keys: ApiKeyStore, redis_client: redis.Redis
) -> None:
    keys.create("k")
    before = user_keys(redis_client)
    reply = client.post("/v1/jobs", data={"question": "What?"})
    assert_unauthorized(reply, "requires an API key")
    assert user_keys(redis_client) == before


def test_unknown_v1_paths_need_a_key_too(client: FlaskClient, keys: ApiKeyStore) -> None:
    keys.create("k")
    assert client.get("/v1/nothing-here").status_code == 401
    assert client.get("/v1").status_code == 401


def test_health_endpoints_stay_open(client: FlaskClient, keys: ApiKeyStore) -> None:
    keys.create("k")
    assert client.get("/healthz").status_code == 200
    reply = client.get("/readyz")
    assert reply.status_code == 503  # no worker, but not 401
    assert reply.json["auth"] == "api_keys"


def test_without_redis_it_fails_closed(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="internvl_queue.api.auth"):
        app = make_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert any("could not check for API keys" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.CRITICAL, logger="internvl_queue.api.auth"):
        reply = app.test_client().get(UNKNOWN_JOB)
    assert reply.status_code == 503
    assert reply.json["error"]["code"] == "service_unavailable"


# -- INTERNVL_AUTH=required (the default outside `up`) ------------------------------------------


@pytest.fixture
def required_client(
    settings: Settings, make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> FlaskClient:
    with caplog.at_level(logging.WARNING, logger="internvl_queue.api.auth"):
        app = make_app(replace(settings, auth="required"))
    return app.test_client()


def test_required_with_an_empty_key_set_refuses_and_says_how_to_make_a_key(
    required_client: FlaskClient, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # It said so when it started, and did not claim to be open.
    logged = caplog.get_records("setup")
    messages = [r.getMessage() for r in logged if r.name == "internvl_queue.api.auth"]
    assert len(messages) == 1 and "INTERNVL_AUTH=required and no API key exists" in messages[0]
    assert "OPEN TO ANYONE" not in messages[0]
    before = user_keys(redis_client)
    for reply in (
        required_client.get(UNKNOWN_JOB),
        required_client.post("/v1/jobs", data={"question": "What?"}),
        required_client.get(UNKNOWN_JOB, headers=bearer("iq_0123456789ab_secret")),
    ):
        assert_unauthorized(reply, "none exists yet")
        assert "internvl-queue keys create --name NAME" in reply.json["error"]["message"]
    assert user_keys(redis_client) == before
    assert required_client.get("/readyz").json["auth"] == "api_keys"


def test_required_stays_closed_after_the_keys_are_flushed(
    required_client: FlaskClient, keys: ApiKeyStore, redis_client: redis.Redis
) -> None:
    """FLUSHDB (or a failover to an empty replica, or an eviction) empties the key set: with
    keys required that is a 401 for everyone, never an open API."""
    _, plaintext = keys.create("k")
    assert required_client.get(UNKNOWN_JOB, headers=bearer(plaintext)).status_code == 404
    redis_client.flushdb()
    assert_unauthorized(required_client.get(UNKNOWN_JOB), "none exists yet")
    assert_unauthorized(required_client.get(UNKNOWN_JOB, headers=bearer(plaintext)), "none exists")
    assert required_client.get("/readyz").json["auth"] == "api_keys"
    # A key made now works at once.
    key, fresh = keys.create("after")
    assert required_client.get(UNKNOWN_JOB, headers=bearer(fresh)).status_code == 404
    assert_unauthorized(required_client.get(UNKNOWN_JOB), "requires an API key")
    keys.revoke(key.id)
    assert_unauthorized(required_client.get(UNKNOWN_JOB), "none exists yet")
