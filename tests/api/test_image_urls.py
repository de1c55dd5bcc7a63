"""Images by URL: fetched by the API at submit from a real local HTTP server, through the SSRF
guard, with byte, time and content checks; each refusal with its code."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient

from internvl_queue.core.settings import Settings
from internvl_queue.core.store import JobStore
from tests.conftest import WorkerProcess, serving
from tests.image_server import ImageServer, Route
from tests.images import photo
from tests.receiver import wait_until
from tests.worker.reference import reference_answer

PHOTO = photo(96, 64, seed=21)
PNG = photo(40, 30, seed=22, fmt="PNG")
UPLOADED = photo(48, 48, seed=23)
LIMIT = 256 * 1024  # INTERNVL_MAX_REQUEST_BYTES in these tests
BIG = b"\xff" * (LIMIT + 1)
# A valid JPEG (trailing bytes are ignored) of half the limit.
MEDIUM = photo(8, 8) + b"\x00" * (LIMIT // 2)
HOLD = threading.Event()  # a slow route's body waits for it; set after each test


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    # A private address no test may reach, behind a redirect from an allowed one.
    metadata = "http://169.254.169.254/latest/meta-data/"
    routes = {
        # The Content-Type lies: the format is read from the bytes, never from the header.
        "/photo.jpg": Route(body=PHOTO, headers={"Content-Type": "text/plain"}),
        "/photo.png": Route(body=PNG),
        "/moved": Route(302, headers={"Location": "/photo.png"}),
        "/to-metadata": Route(302, headers={"Location": metadata}),
        "/loop": Route(301, headers={"Location": "/loop"}),
        "/big": Route(body=BIG),
        "/medium.jpg": Route(body=MEDIUM),
        "/big-unannounced": Route(body=BIG, length=False),
        "/slow": Route(body=PHOTO, hold=HOLD),
        "/slow-unannounced": Route(body=PHOTO, hold=HOLD, length=False),
        "/text": Route(body=b"hello, I am not an image", headers={"Content-Type": "image/png"}),
    }
    running = ImageServer(routes).start()
    yield running
    HOLD.set()
    running.stop()


@pytest.fixture(autouse=True)
def release_slow_routes() -> Iterator[None]:
    HOLD.clear()
    yield
    HOLD.set()


def _settings(settings: Settings, **changes: Any) -> Settings:
    base = {
        "image_url_allowed_cidrs": "127.0.0.0/8",
        "image_fetch_timeout_s": 2.0,
        "max_request_bytes": LIMIT,
    }
    return replace(settings, **{**base, **changes})


@pytest.fixture
def url_client(make_app: Callable[..., Flask], settings: Settings) -> FlaskClient:
    """An API that may fetch from loopback (the test server), with small limits."""
    return make_app(_settings(settings)).test_client()


def _body(*images: dict[str, str], question: str = "What is this?") -> dict[str, Any]:
    return {"question": question, "images": list(images), "max_new_tokens": 6}


def _data(image: bytes) -> dict[str, str]:
    return {"data": base64.b64encode(image).decode()}


def test_a_url_image_is_stored_like_an_upload(
    url_client: FlaskClient, server: ImageServer, redis_client: redis.Redis, settings: Settings
) -> None:
    reply = url_client.post(
        "/v1/jobs",
        json=_body(
            _data(UPLOADED), {"url": server.url("/photo.jpg")}, {"url": server.url("/moved")}
        ),
    )
    assert reply.status_code == 202, reply.json
    store = JobStore.from_settings(redis_client, settings)
    # In the order sent, base64 and URLs mixed; the redirect was followed to the PNG.
    assert store.images(reply.json["id"]) == [UPLOADED, PHOTO, PNG]


@pytest.mark.parametrize(
    ("path", "status", "code", "says"),
    [
        ("/missing", 422, "image_url_unreachable", "answered HTTP 404"),
        ("/to-metadata", 422, "image_url_not_allowed", "169.254.169.254 is a link-local address"),
        ("/loop", 422, "image_url_unreachable", "redirects more than 3 times"),
        ("/big", 422, "image_url_too_large", f"over the {LIMIT} bytes"),
        ("/big-unannounced", 422, "image_url_too_large", f"over the {LIMIT} bytes"),
        ("/slow", 422, "image_url_timeout", "did not deliver its image within 2 s"),
        ("/slow-unannounced", 422, "image_url_timeout", "did not deliver its image within 2 s"),
        ("/text", 415, "unsupported_image", "image 1 is not an image in a format we accept"),
    ],
)
def test_a_bad_url_is_refused_at_submit_with_its_code(
    url_client: FlaskClient, server: ImageServer, path: str, status: int, code: str, says: str
) -> None:
    reply = url_client.post("/v1/jobs", json=_body({"url": server.url(path)}))
    assert reply.status_code == status, reply.json
    assert reply.json["error"]["code"] == code
    assert says in reply.json["error"]["message"]


def test_a_loopback_url_is_refused_by_default_and_never_requested(
    make_app: Callable[..., Flask], settings: Settings, server: ImageServer
) -> None:
    client = make_app(_settings(settings, image_url_allowed_cidrs="")).test_client()
    before = len(server.requested)
    reply = client.post("/v1/jobs", json=_body({"url": server.url("/photo.jpg")}))
    assert reply.status_code == 422, reply.json
    assert reply.json["error"]["code"] == "image_url_not_allowed"
    assert (
        "images[0].url's address 127.0.0.1 is a loopback address" in reply.json["error"]["message"]
    )
    assert "INTERNVL_IMAGE_URL_ALLOWED_CIDRS" in reply.json["error"]["message"]
    assert len(server.requested) == before


def test_the_webhook_allow_list_does_not_open_image_urls(
    make_app: Callable[..., Flask], settings: Settings, server: ImageServer
) -> None:
    client = make_app(
        _settings(settings, image_url_allowed_cidrs="", webhook_allowed_cidrs="127.0.0.0/8")
    ).test_client()
    reply = client.post("/v1/jobs", json=_body({"url": server.url("/photo.jpg")}))
    assert reply.json["error"]["code"] == "image_url_not_allowed"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("file:///etc/passwd", "images[0].url must be an http:// or https:// URL"),
        ("http://user:pw@127.0.0.1/x.jpg", "must not carry credentials"),
        ("http://127.0.0.1:99999/x.jpg", "port '99999'"),
    ],
)
def test_a_url_that_cannot_be_fetched_is_invalid(
    url_client: FlaskClient, url: str, says: str
) -> None:
    reply = url_client.post("/v1/jobs", json=_body({"url": url}))
    assert reply.status_code == 422, reply.json
    assert reply.json["error"]["code"] == "image_url_invalid"
    assert says in reply.json["error"]["message"]


@pytest.mark.parametrize(
    ("image", "says"),
    [
        ({"url": 5}, "images[0].url must be a string"),
        ({"url": "http://x/", "data": "AAAA"}, "has both 'data' and 'url'"),
        ({"href": "http://x/"}, "a 'data' (base64) or a 'url' string"),
    ],
)
def test_a_malformed_image_object_is_a_400(
    url_client: FlaskClient, image: dict[str, Any], says: str
) -> None:
    reply = url_client.post("/v1/jobs", json=_body(image))
    assert reply.status_code == 400
    assert reply.json["error"]["code"] == "invalid_json"
    assert says in reply.json["error"]["message"]


def test_uploads_and_urls_share_the_request_byte_limit(
    url_client: FlaskClient, server: ImageServer
) -> None:
    alone = url_client.post("/v1/jobs", json=_body({"url": server.url("/medium.jpg")}))
    assert alone.status_code == 202, alone.json
    # With an upload of 60 % of the limit, the fetched half no longer fits.
    upload = photo(8, 8) + b"\x00" * (LIMIT * 6 // 10)
    body = _body(_data(upload), {"url": server.url("/medium.jpg")})
    reply = url_client.post("/v1/jobs", json=body)
    assert reply.status_code == 422, reply.json
    assert reply.json["error"]["code"] == "image_url_too_large"


def test_form_image_url_fields_follow_the_files(
    url_client: FlaskClient, server: ImageServer, redis_client: redis.Redis, settings: Settings
) -> None:
    form = {
        "question": "q",
        "image": [(io.BytesIO(UPLOADED), "a.jpg")],
        "image_url": [server.url("/photo.png"), "", server.url("/photo.jpg")],
    }
    reply = url_client.post("/v1/jobs", data=form)
    assert reply.status_code == 202, reply.json
    store = JobStore.from_settings(redis_client, settings)
    assert store.images(reply.json["id"]) == [UPLOADED, PNG, PHOTO]
    bad = url_client.post("/v1/jobs", data={"question": "q", "image_url": server.url("/nope")})
    assert bad.json["error"]["code"] == "image_url_unreachable"
    assert "image_url[0] answered HTTP 404" in bad.json["error"]["message"]


def test_a_retry_with_the_same_key_and_url_finds_its_job(
    url_client: FlaskClient, server: ImageServer
) -> None:
    headers = {"Idempotency-Key": "url-retry-1"}
    before = server.requested.count("/photo.jpg")  # the server serves the whole module
    first = url_client.post(
        "/v1/jobs", json=_body({"url": server.url("/photo.jpg")}), headers=headers
    )
    assert first.status_code == 202 and server.requested.count("/photo.jpg") == before + 1
    again = url_client.post(
        "/v1/jobs", json=_body({"url": server.url("/photo.jpg")}), headers=headers
    )
    assert again.headers["Idempotency-Replayed"] == "true"
    assert again.json["id"] == first.json["id"]
    # The retry found its job without fetching the image again.
    assert server.requested.count("/photo.jpg") == before + 1
    other = url_client.post("/v1/jobs", json=_body({"url": server.url("/moved")}), headers=headers)
    assert other.json["error"]["code"] == "idempotency_key_reused"


def test_slow_urls_take_at_most_the_fetch_slots(
    make_app: Callable[..., Flask], settings: Settings, server: ImageServer
) -> None:
    app = make_app(_settings(settings, image_fetch_concurrency=1, image_fetch_timeout_s=20.0))
    before = server.requested.count("/slow")
    with serving(app) as api, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            requests.post, f"{api}/v1/jobs", json=_body({"url": server.url("/slow")}), timeout=30
        )
        wait_until(lambda: server.requested.count("/slow") > before, 10, "the slow fetch")
        busy = requests.post(
            f"{api}/v1/jobs", json=_body({"url": server.url("/photo.jpg")}), timeout=30
        )
        # Uploads (and everything else) still go through while the one slot is held.
        upload = requests.post(f"{api}/v1/jobs", json=_body(_data(UPLOADED)), timeout=30)
        assert not slow.done()
        HOLD.set()
        assert slow.result().status_code == 202, slow.result().text
    assert busy.status_code == 503, busy.text
    assert busy.json()["error"]["code"] == "image_fetch_busy"
    assert busy.headers["Retry-After"] == "1"
    assert upload.status_code == 202


def test_url_images_are_answered_like_uploads_by_a_real_worker(
    make_app: Callable[..., Flask],
    settings: Settings,
    worker: WorkerProcess,
    server: ImageServer,
    tiny_model_dir: Path,
) -> None:
    with serving(make_app(_settings(settings))) as api:
        reply = requests.post(
            f"{api}/v1/jobs",
            json=_body({"url": server.url("/photo.jpg")}, _data(UPLOADED), question="Compare."),
            headers={"Prefer": "wait=60"},
            timeout=90,
        )
        job = reply.json()
        if job["status"] not in ("succeeded", "failed"):
            job = requests.get(f"{api}/v1/jobs/{job['id']}?wait=60", timeout=90).json()
    assert job["status"] == "succeeded", job
    expected, tiles = reference_answer(
        tiny_model_dir, [PHOTO, UPLOADED], "Compare.", max_new_tokens=6, max_tiles=12
    )
    assert expected
    assert job["result"]["answer"] == expected
    assert job["result"]["usage"]["image_tiles"] == tiles
