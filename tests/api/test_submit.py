"""POST /v1/jobs and GET /v1/jobs/<id> through the Flask app, against a real Redis and broker."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask
from urllib3 import encode_multipart_formdata

from internvl_queue.core.keys import dispatching_key, job_key
from internvl_queue.core.settings import Settings
from tests.conftest import user_keys
from tests.images import photo, png_bomb, truncated_jpeg
from tests.odd_images import EPS, PDF, SVG

JPEG = photo(64, 48, seed=1)


def _form(question: str = "What is this?", images: list[bytes] | None = None, **fields: str):
    data: dict[str, Any] = {"question": question, **fields}
    data["image"] = [(io.BytesIO(b), f"img{i}.jpg") for i, b in enumerate(images or [JPEG])]
    return data


def test_multipart_submit_is_accepted_and_queued(
    client, redis_client: redis.Redis, settings: Settings
) -> None:
    reply = client.post(
        "/v1/jobs",
        data=_form(
            images=[JPEG, photo(30, 30)],
            max_new_tokens="32",
            max_tiles="3",
            timeout_s="90",
            metadata='{"ref": "abc"}',
        ),
    )
    assert reply.status_code == 202, reply.json
    job = reply.json
    assert reply.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["params"] == {"max_new_tokens": 32, "max_tiles": 3, "timeout_s": 90}
    assert job["metadata"] == {"ref": "abc"}
    assert job["created_at"].endswith("Z")
    assert job["result"] is None and job["error"] is None and job["started_at"] is None
    assert set(job) == {
        "id",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "expires_at",
        "queue_position",
        "priority",
        "cancel_requested_at",
        "question",
        "params",
        "metadata",
        "webhook",
        "result",
        "error",
        "batch",
    }
    assert job["batch"] is None  # not submitted in a batch
    # stored, with both images in order, and one message on the queue carrying only the id
    assert redis_client.exists(job_key(job["id"]))
    assert redis_client.lrange(f"iq:job:{job['id']}:images", 0, -1) == [JPEG, photo(30, 30)]
    messages = redis_client.lrange(settings.queue_name, 0, -1)
    assert len(messages) == 1
    body = json.loads(base64.b64decode(json.loads(messages[0])["body"]))
    assert body[0] == [job["id"]]

    polled = client.get(f"/v1/jobs/{job['id']}")
    assert polled.status_code == 200
    assert polled.json == job


def test_json_submit_with_base64_and_data_url(client, redis_client: redis.Redis) -> None:
    b64 = base64.b64encode(JPEG).decode()
    reply = client.post(
        "/v1/jobs",
        json={
            "question": "q",
            "images": [{"data": b64}, {"data": f"data:image/jpeg;base64,{b64}"}],
            "max_new_tokens": 8,
            "metadata": {"n": 1},
        },
    )
    assert reply.status_code == 202, reply.json
    assert reply.json["params"]["max_new_tokens"] == 8
    assert reply.json["metadata"] == {"n": 1}
    assert redis_client.llen(f"iq:job:{reply.json['id']}:images") == 2


def test_unknown_job_is_404(client) -> None:
    reply = client.get("/v1/jobs/0123456789abcdef")
    assert reply.status_code == 404
    assert reply.json["error"]["code"] == "job_not_found"


def _encoded_multipart(image: bytes) -> dict[str, Any]:
    # Pre-encoded bytes, as a real client sends them (the test client would otherwise spool a
    # 30 MB dict body to a temporary file that it never closes).
    body, content_type = encode_multipart_formdata(
        {"question": "q", "image": ("big.jpg", image, "image/jpeg")}
    )
    return {"data": body, "content_type": content_type}


def _raw_multipart(question: bytes, *, parts: int = 0) -> dict[str, Any]:
    """A multipart body as bytes: the question's bytes as given (a client library would encode
    a str), and ``parts`` more small fields."""
    fields: list[Any] = [("question", question), ("image", ("a.jpg", JPEG, "image/jpeg"))]
    fields += [(f"extra{index}", "x") for index in range(parts)]
    body, content_type = encode_multipart_formdata(fields)
    return {"data": body, "content_type": content_type}


def _json_bytes(question: bytes) -> dict[str, Any]:
    image = base64.b64encode(JPEG)
    return {
        "data": b'{"question": "' + question + b'", "images": [{"data": "' + image + b'"}]}',
        "content_type": "application/json",
    }


def _json_image(image: bytes) -> dict[str, Any]:
    return {"json": {"question": "q", "images": [{"data": base64.b64encode(image).decode()}]}}


# Questions with no visible character: zero-width space and joiner, a byte order mark, a
# right-to-left override, a Hangul filler, spaces of several kinds.
INVISIBLE_QUESTIONS = ["\u200b\u200b\u200d", "\ufeff", "\u202e\u200f", "\u3164", "\u00a0\u2003\n"]


def _bad_requests() -> list[Any]:
    return [
        *[
            pytest.param(request, 415, "unsupported_image", id=f"{name}-{path}")
            for name, image in [("eps", EPS), ("pdf", PDF), ("svg", SVG)]
            for path, request in [
                ("multipart", {"data": _form(images=[image])}),
                ("json", _json_image(image)),
            ]
        ],
        *[
            pytest.param(request, 422, "invalid_question", id=f"invisible-question-{path}-{n}")
            for n, question in enumerate(INVISIBLE_QUESTIONS)
            for path, request in [
                ("multipart", {"data": _form(question=question)}),
                (
                    "json",
                    {"json": {"question": question, "images": _json_image(JPEG)["json"]["images"]}},
                ),
            ]
        ],
        pytest.param(
            _raw_multipart(b"What is \xff this?"), 400, "invalid_utf8", id="multipart-not-utf8"
        ),
        pytest.param(_json_bytes(b"What is \xff this?"), 400, "invalid_utf8", id="json-not-utf8"),
        pytest.param(
            {
                "data": b"question=What%20is%20%FF%20this%3F",
                "content_type": "application/x-www-form-urlencoded",
            },
            400,
            "invalid_utf8",
            id="urlencoded-not-utf8",
        ),
        pytest.param(_raw_multipart(b"q", parts=999), 413, "too_many_parts", id="1001-parts"),
        pytest.param(
            {"data": _form(images=[b"%PDF-1.4 not an image"])},
            415,
            "unsupported_image",
            id="non-image",
        ),
        pytest.param(
            {"data": _form(images=[truncated_jpeg()])}, 422, "corrupt_image", id="truncated-jpeg"
        ),
        pytest.param(
            {"data": _form(images=[png_bomb()])}, 413, "image_too_large", id="png-bomb-20000x20000"
        ),
        pytest.param({"data": _form(question="")}, 422, "invalid_question", id="empty-question"),
        pytest.param(
            {"data": _form(question="x" * 8001)}, 400, "question_too_long", id="long-question"
        ),
        pytest.param(
            {"data": _form(question="\U0001f600" * 5000)},
            400,
            "question_too_long",
            id="5000-emoji-question",
        ),
        pytest.param(
            {"data": _form(max_new_tokens="\u00b2")},
            422,
            "invalid_parameter",
            id="max-new-tokens-superscript-two",
        ),
        pytest.param(
            {"data": _form(metadata='{"a": NaN}')}, 400, "invalid_metadata", id="metadata-nan"
        ),
        pytest.param(
            {
                "data": json.dumps(
                    {
                        "question": "q",
                        "images": [{"data": base64.b64encode(JPEG).decode()}],
                        "metadata": {"a": 1},
                    }
                ).replace('"a": 1', '"a": Infinity'),
                "content_type": "application/json",
            },
            400,
            "invalid_metadata",
            id="json-metadata-infinity",
        ),
        pytest.param(
            {
                "data": '{"question": "q", "max_new_tokens": NaN, "images": []}',
                "content_type": "application/json",
            },
            400,
            "invalid_json",
            id="json-nan-elsewhere",
        ),
        pytest.param(
            {"data": '{"a": ' * 40_000, "content_type": "application/json"},
            400,
            "invalid_json",
            id="200KB-nested-json",
        ),
        pytest.param(
            {"data": "[" * 200_000 + "]" * 200_000, "content_type": "application/json"},
            400,
            "invalid_json",
            id="400KB-nested-json-list",
        ),
        pytest.param({"data": {"question": "q"}}, 400, "missing_image", id="no-image"),
        pytest.param(
            {"data": {"image": [(io.BytesIO(JPEG), "a.jpg")]}},
            400,
            "missing_question",
            id="no-question",
        ),
        pytest.param({"data": _form(images=[JPEG] * 9)}, 422, "too_many_images", id="9-images"),
        pytest.param(
            {"data": _form(max_new_tokens="0")}, 422, "invalid_parameter", id="max-new-tokens-0"
        ),
        pytest.param({"data": _form(max_tiles="13")}, 422, "invalid_parameter", id="max-tiles-13"),
        pytest.param(
            {"data": _form(metadata="not json")}, 400, "invalid_metadata", id="bad-metadata"
        ),
        pytest.param(
            _encoded_multipart(b"x" * (30 * 1024 * 1024)), 413, "request_too_large", id="30MB-body"
        ),
        pytest.param(
            {"data": b"{", "content_type": "application/json"},
            400,
            "invalid_json",
            id="broken-json",
        ),
        pytest.param(
            {"json": {"question": "q", "images": [{"data": "***"}]}},
            400,
            "invalid_base64",
            id="bad-base64",
        ),
        pytest.param(
            {"json": {"question": "q", "images": "nope"}},
            400,
            "invalid_json",
            id="images-not-a-list",
        ),
        pytest.param(
            {"data": "question=q", "content_type": "text/plain"},
            415,
            "unsupported_media_type",
            id="text-body",
        ),
    ]


@pytest.mark.parametrize(("request_kwargs", "status", "code"), _bad_requests())
def test_bad_input_is_refused_and_nothing_is_queued(
    client, redis_client: redis.Redis, request_kwargs: dict[str, Any], status: int, code: str
) -> None:
    reply = client.post("/v1/jobs", **request_kwargs)
    assert reply.status_code == status, reply.json
    assert reply.json["error"]["code"] == code
    assert reply.json["error"]["message"]
    assert user_keys(redis_client) == []


def test_a_job_the_broker_refused_is_accepted_and_left_to_a_reaper(
    make_app: Callable[..., Flask], settings: Settings, redis_client: redis.Redis
) -> None:
    """The job is stored before its message is sent: refusing it then would make the caller
    submit it again while a reaper sends the first one's message (two jobs run)."""

    class RefusingDispatcher:
        def dispatch(self, job_id: str, priority: object = None) -> None:
            raise ConnectionError("broker down")

    client = make_app(settings, dispatcher=RefusingDispatcher()).test_client()
    reply = client.post("/v1/jobs", data=_form())
    assert reply.status_code == 202
    assert reply.json["status"] == "queued"
    assert redis_client.zscore(dispatching_key(), reply.json["id"]) is not None  # still owed


def test_unknown_route_and_method_are_json(client) -> None:
    assert client.get("/v2/nothing").json["error"]["code"] == "not_found"
    reply = client.delete("/v1/jobs/abc")
    assert reply.status_code == 405
    assert reply.json["error"]["code"] == "method_not_allowed"


def test_replies_are_strict_json(client, redis_client: redis.Redis) -> None:
    """A NaN that got into a record (written before strict parsing) is a logged 500, never a
    reply that strict clients cannot parse."""
    job = client.post("/v1/jobs", data=_form()).json
    redis_client.hset(job_key(job["id"]), "metadata", '{"a": NaN}')
    reply = client.get(f"/v1/jobs/{job['id']}")
    assert reply.status_code == 500
    json.loads(reply.data, parse_constant=lambda text: pytest.fail(f"{text} in a reply"))


@pytest.mark.parametrize(
    "question",
    ["a\u200b", "\u0645\u0627\u0630\u0627\u061f", "\U0001f600", "\u0301", "\u202ewhat?"],
    ids=["letter-and-zero-width", "arabic", "emoji", "lone-combining-mark", "rtl-override-text"],
)
def test_a_question_with_something_visible_is_accepted_on_both_paths(client, question: str) -> None:
    image = base64.b64encode(JPEG).decode()
    for request in (
        {"data": _form(question=question)},
        {"json": {"question": question, "images": [{"data": image}]}},
    ):
        reply = client.post("/v1/jobs", **request)
        assert reply.status_code == 202, reply.json
        assert reply.json["question"] == question


def test_a_form_field_in_a_declared_charset_is_read_in_it(client) -> None:
    """Werkzeug honours a part's ``charset`` (ASCII, UTF-8, ISO-8859-1): so do we."""
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="question"\r\n'
        "Content-Type: text/plain; charset=iso-8859-1\r\n\r\n"
    ).encode() + "Qu'est-ce que c'est, très précisément ?".encode("latin-1")
    body += (
        (
            f"\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + JPEG
        + f"\r\n--{boundary}--\r\n".encode()
    )
    reply = client.post(
        "/v1/jobs", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert reply.status_code == 202, reply.json
    assert reply.json["question"] == "Qu'est-ce que c'est, très précisément ?"
