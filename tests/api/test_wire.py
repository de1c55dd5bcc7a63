"""What reaches clients over a real socket from a real ``internvl-queue api`` (gunicorn).

- Early refusals (413 for a 30 MB body, 401, 415) arrive as JSON in ``urllib``, ``requests`` and
  ``httpx``, not as a reset connection.
- 64 uploads that stall hold no thread: ``/healthz`` and an ordinary submit answer quickly
  meanwhile, and each stalled one is cut off by the read timeout (408).
- A client that hangs up mid-body is logged 499, not 500; a WebSocket handshake gets a JSON
  403; a form of 1 001 parts is ``too_many_parts``; forms and JSON share the text rules.
"""

from __future__ import annotations

import base64
import json
import socket
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import redis
import requests
from urllib3 import encode_multipart_formdata

from internvl_queue.core.apikeys import ApiKeyStore
from tests.api.api_process import ApiProcess
from tests.api.raw_http import read_reply
from tests.conftest import flush_our_keys
from tests.images import photo

READ_TIMEOUT_S = 3.0
JPEG = photo(64, 48, seed=1)


@pytest.fixture(scope="module")
def api(redis_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    process = ApiProcess(
        redis_server_url,
        tmp_path_factory.mktemp("api") / "api.log",
        INTERNVL_REQUEST_READ_TIMEOUT_S=str(READ_TIMEOUT_S),
    )
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def key(redis_client: redis.Redis) -> Iterator[str]:
    """An active API key (so that the API requires one, whatever its auth mode)."""
    _, secret = ApiKeyStore(redis_client).create("wire tests")
    yield secret
    flush_our_keys(redis_client)


# Each client posts (url, body, headers) and returns (status, parsed JSON body).
Post = Callable[[str, bytes, dict[str, str]], tuple[int, dict]]


def _urllib(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _requests(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    reply = requests.post(url, data=body, headers=headers, timeout=30)
    return reply.status_code, reply.json()


def _httpx(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    reply = httpx.post(url, content=body, headers=headers, timeout=30)
    return reply.status_code, reply.json()


CLIENTS = [
    pytest.param(_urllib, id="urllib"),
    pytest.param(_requests, id="requests"),
    pytest.param(_httpx, id="httpx"),
]


def _multipart(image: bytes) -> tuple[bytes, str]:
    return encode_multipart_formdata({"question": "q", "image": ("a.jpg", image, "image/jpeg")})


@pytest.mark.parametrize("post", CLIENTS)
def test_a_30_mb_body_gets_its_413_in_every_client(api: ApiProcess, key: str, post: Post) -> None:
    body, content_type = _multipart(b"x" * (30 * 1024 * 1024))
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {key}"}
    status, reply = post(f"{api.url}/v1/jobs", body, headers)
    assert status == 413
    assert reply["error"]["code"] == "request_too_large"
    assert "20971520 bytes" in reply["error"]["message"]
    assert requests.get(f"{api.url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("post", CLIENTS)
def test_other_early_refusals_of_large_bodies_reach_every_client(
    api: ApiProcess, key: str, post: Post
) -> None:
    body, content_type = _multipart(b"x" * (8 * 1024 * 1024))
    status, reply = post(f"{api.url}/v1/jobs", body, {"Content-Type": content_type})
    assert (status, reply["error"]["code"]) == (401, "unauthorized")
    headers = {"Content-Type": "text/plain", "Authorization": f"Bearer {key}"}
    status, reply = post(f"{api.url}/v1/jobs", b"x" * (8 * 1024 * 1024), headers)
    assert (status, reply["error"]["code"]) == (415, "unsupported_media_type")


def test_a_client_that_expects_100_continue_gets_the_413_without_sending(api: ApiProcess) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 31457280\r\nExpect: 100-continue\r\n\r\n"
        )
        head, _, body = read_reply(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "request_too_large"


def _timed(call: Callable[[], requests.Response]) -> tuple[float, requests.Response]:
    start = time.monotonic()
    reply = call()
    return time.monotonic() - start, reply


def test_64_stalled_uploads_freeze_nothing_and_are_cut_off(
    api: ApiProcess, key: str, tmp_path: Path
) -> None:
    stalled = []
    for _ in range(64):
        sock = socket.create_connection(("127.0.0.1", api.port), timeout=READ_TIMEOUT_S + 10)
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b'{"question": "' + b"q" * 1000
        )
        stalled.append(sock)
    opened = time.monotonic()
    body = {"question": "q", "images": [{"data": base64.b64encode(JPEG).decode()}]}
    health, submits = [], []
    for _ in range(5):
        took, reply = _timed(lambda: requests.get(f"{api.url}/healthz", timeout=10))
        assert reply.status_code == 200
        health.append(took)
        took, reply = _timed(
            lambda: requests.post(
                f"{api.url}/v1/jobs",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
        )
        assert reply.status_code == 202, reply.text
        submits.append(took)
    assert time.monotonic() - opened < READ_TIMEOUT_S, "measured after the stalls were cut off"
    print(
        f"\nwith 64 stalled uploads: /healthz median {statistics.median(health) * 1000:.1f} ms, "
        f"max {max(health) * 1000:.1f} ms; submit median {statistics.median(submits) * 1000:.1f}"
        f" ms, max {max(submits) * 1000:.1f} ms"
    )
    assert max(health) < 1.0 and max(submits) < 1.0

    cut_off = []
    for sock in stalled:
        head, _, reply_body = read_reply(sock).partition(b"\r\n\r\n")
        cut_off.append(time.monotonic() - opened)
        assert head.startswith(b"HTTP/1.1 408"), head
        assert json.loads(reply_body)["error"]["code"] == "request_timeout"
        assert sock.recv(1) == b""  # and the connection is closed
        sock.close()
    print(f"stalled uploads cut off after {min(cut_off):.1f}..{max(cut_off):.1f} s")
    assert min(cut_off) > READ_TIMEOUT_S - 0.5 and max(cut_off) < READ_TIMEOUT_S + 3


def _open(api: ApiProcess, first_bytes: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=READ_TIMEOUT_S + 10)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def test_64_stalled_request_heads_freeze_nothing_and_are_cut_off(api: ApiProcess) -> None:
    """A connection whose first request head never completes (nothing sent, or headers that
    stop half-way) is answered 408 and closed after the read timeout; meanwhile the API
    answers others at once."""
    with ExitStack() as closing:
        stalled = [
            closing.enter_context(
                _open(api, b"" if n % 2 else b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            )
            for n in range(64)
        ]
        _cut_off_heads(api, stalled)


def _cut_off_heads(api: ApiProcess, stalled: list[socket.socket]) -> None:
    opened = time.monotonic()
    health = [_timed(lambda: requests.get(f"{api.url}/healthz", timeout=10)) for _ in range(5)]
    assert all(reply.status_code == 200 for _, reply in health)
    assert max(took for took, _ in health) < 1.0
    cut_off = []
    for sock in stalled:
        head, _, body = read_reply(sock).partition(b"\r\n\r\n")
        cut_off.append(time.monotonic() - opened)
        assert head.startswith(b"HTTP/1.1 408"), head
        assert b"content-type: application/json" in head.lower()
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert sock.recv(1) == b""  # and the connection is closed
    print(
        f"\nwith 64 stalled request heads: /healthz max "
        f"{max(took for took, _ in health) * 1000:.1f} ms; cut off after "
        f"{min(cut_off):.1f}..{max(cut_off):.1f} s"
    )
    assert min(cut_off) > READ_TIMEOUT_S - 0.5 and max(cut_off) < READ_TIMEOUT_S + 3


def test_a_head_sent_slowly_but_completely_is_served(api: ApiProcess) -> None:
    sock = _open(api, b"GET /healthz HTTP/1.1\r\n")
    for line in (b"Host: x\r\n", b"Accept: */*\r\n", b"\r\n"):
        time.sleep(READ_TIMEOUT_S / 4)
        sock.sendall(line)
    head, _, body = read_reply(sock).partition(b"\r\n\r\n")
    sock.close()
    assert head.startswith(b"HTTP/1.1 200") and json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request_line_too_long"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
            431,
            "request_headers_too_large",
        ),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
    ],
)
def test_requests_the_http_layer_refuses_get_json_errors(
    api: ApiProcess, request_bytes: bytes, status: int, code: str
) -> None:
    sock = _open(api, request_bytes)
    head, _, body = read_reply(sock).partition(b"\r\n\r\n")
    sock.close()
    assert head.startswith(f"HTTP/1.1 {status}".encode()), head
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]


def _new_log_lines(api: ApiProcess, since: int, wanted: Callable[[str], bool]) -> list[str]:
    """The API's log lines written after byte ``since`` that ``wanted`` picks, once some are
    there (the access line comes after the app has seen the hang-up), or after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        lines = api.log_path.read_bytes()[since:].decode(errors="replace").splitlines()
        found = [line for line in lines if wanted(line)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("sent_bytes", "pause_s"),
    [(0, 0.0), (1024, 0.05), (50_000, 0.3), (99_999, 1.0)],
    ids=["after-the-head", "after-1KB", "after-50KB", "one-byte-short"],
)
def test_a_client_that_hangs_up_mid_body_is_logged_as_its_hang_up_not_a_500(
    api: ApiProcess, sent_bytes: int, pause_s: float
) -> None:
    """A body of 100 000 bytes announced, part of it sent, a pause, then the client closes.
    Before: gunicorn logged ``"POST /v1/jobs HTTP/1.1" 500 0``."""
    since = api.log_path.stat().st_size
    path = f"/v1/jobs?hangup={sent_bytes}"  # names this request in the log
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
            + b"x" * sent_bytes
        )
        time.sleep(pause_s)  # the front is waiting for the rest of the body
    access = _new_log_lines(api, since, lambda line: f'"POST {path} HTTP/1.1"' in line)
    assert len(access) == 1, api.log()
    assert f'"POST {path} HTTP/1.1" 499 ' in access[0], access[0]
    said = _new_log_lines(api, since, lambda line: "hung up" in line)
    assert any("POST /v1/jobs: the client hung up before its body was complete" in s for s in said)
    assert requests.get(f"{api.url}/healthz", timeout=5).status_code == 200


def test_a_client_that_hangs_up_during_a_long_poll_is_logged_as_its_hang_up(
    api: ApiProcess, key: str
) -> None:
    """The job stays queued (no worker here), so the poll is still waiting when the client
    leaves: no reply is sent, and the access line says so with 499."""
    job = _form_submit(api, key, [("question", "q"), ("image", ("a.jpg", JPEG, "image/jpeg"))])
    assert job.status_code == 202, job.text
    path = f"/v1/jobs/{job.json()['id']}?wait=30"
    since = api.log_path.stat().st_size
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
        )
        time.sleep(0.5)  # the poll is waiting
    access = _new_log_lines(api, since, lambda line: f'"GET {path} HTTP/1.1"' in line)
    assert len(access) == 1 and f'"GET {path} HTTP/1.1" 499 ' in access[0], api.log()


@pytest.mark.parametrize("path", ["/healthz", "/v1/jobs", "/nowhere"])
@pytest.mark.parametrize("version", ["13", "8"])
def test_a_websocket_handshake_gets_a_json_refusal(
    api: ApiProcess, path: str, version: str
) -> None:
    """Before: ``403`` with an empty body (version 13), or ``426`` with code ``bad_request``
    (version 8)."""
    sock = _open(
        api,
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n"
        "\r\n".encode(),
    )
    head, _, body = read_reply(sock).partition(b"\r\n\r\n")
    sock.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "websocket_not_supported"
    assert "GET /v1/jobs/<id>?wait=30" in error["message"]


def test_an_upgrade_to_anything_else_is_ignored_and_the_request_served(api: ApiProcess) -> None:
    """RFC 9110 section 7.8: a server may ignore Upgrade; the API answers in HTTP/1.1."""
    sock = _open(
        api, b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    )
    head, _, body = read_reply(sock).partition(b"\r\n\r\n")
    sock.close()
    assert head.startswith(b"HTTP/1.1 200"), head
    assert json.loads(body) == {"status": "ok"}


def _form_submit(api: ApiProcess, key: str, fields: list) -> requests.Response:
    body, content_type = encode_multipart_formdata(fields)
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {key}"}
    return requests.post(f"{api.url}/v1/jobs", data=body, headers=headers, timeout=30)


def test_a_form_of_1001_parts_is_too_many_parts_not_too_large(api: ApiProcess, key: str) -> None:
    """Before: ``413 request_too_large``, "larger than the limit of 20971520 bytes", for 56 KB."""
    fields: list = [("question", "q"), ("image", ("a.jpg", JPEG, "image/jpeg"))]
    fields += [(f"f{index}", "x") for index in range(999)]
    reply = _form_submit(api, key, fields)
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"]["code"] == "too_many_parts"
    assert "more than 1000 parts" in reply.json()["error"]["message"]


@pytest.mark.parametrize(
    ("question", "status", "code"),
    [
        (b"What is \xff this?", 400, "invalid_utf8"),
        ("\u200b\u200b\u200d".encode(), 422, "invalid_question"),
    ],
    ids=["not-utf8", "zero-width-only"],
)
def test_text_rules_are_the_same_for_forms_and_json(
    api: ApiProcess, key: str, question: bytes, status: int, code: str
) -> None:
    """Before: the form accepted both (with U+FFFD substituted for the byte); JSON refused the
    byte (400 invalid_json) and accepted the zero-width question."""
    by_form = _form_submit(
        api, key, [("question", question), ("image", ("a.jpg", JPEG, "image/jpeg"))]
    )
    image = base64.b64encode(JPEG)
    by_json = requests.post(
        f"{api.url}/v1/jobs",
        data=b'{"question": "' + question + b'", "images": [{"data": "' + image + b'"}]}',
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        timeout=30,
    )
    for reply in (by_form, by_json):
        assert reply.status_code == status, reply.text
        assert reply.json()["error"]["code"] == code
