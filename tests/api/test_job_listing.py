"""``GET /v1/jobs`` on a real Redis: walks, concurrent submits, filters, isolation, expiry, and
the codes of bad parameters."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from internvl_queue.core.apikeys import ApiKeyStore
from internvl_queue.core.job_listing import Position
from internvl_queue.core.keys import job_key, owner_jobs_key
from internvl_queue.core.settings import Settings
from tests.api.lifecycle_helpers import json_body

Headers = dict[str, str]


def _submit(client: FlaskClient, count: int, headers: Headers | None = None) -> list[str]:
    ids = []
    for index in range(count):
        reply = client.post("/v1/jobs", json=json_body(f"q{index}?"), headers=headers or {})
        assert reply.status_code == 202, reply.json
        ids.append(reply.json["id"])
    return ids


def _page(client: FlaskClient, headers: Headers | None = None, **query: Any) -> dict[str, Any]:
    reply = client.get("/v1/jobs", query_string=query, headers=headers or {})
    assert reply.status_code == 200, reply.json
    body: dict[str, Any] = reply.json
    return body


def _walk(client: FlaskClient, headers: Headers | None = None, **query: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        page = _page(client, headers, **query, **({"cursor": cursor} if cursor else {}))
        ids += [job["id"] for job in page["data"]]
        if (cursor := page["next_cursor"]) is None:
            return ids
    raise AssertionError("the walk does not end")


def test_a_walk_lists_every_job_once_newest_first(client: FlaskClient) -> None:
    submitted = _submit(client, 50)
    pages, cursor = [], None
    while True:
        page = _page(client, limit=7, **({"cursor": cursor} if cursor else {}))
        pages.append(page["data"])
        if (cursor := page["next_cursor"]) is None:
            break
    assert [len(page) for page in pages] == [7] * 7 + [1]
    assert [job["id"] for page in pages for job in page] == submitted[::-1]
    one = pages[0][0]
    assert one == client.get(f"/v1/jobs/{one['id']}").json  # the same view, queue_position too
    assert one["queue_position"] == 50


def test_jobs_submitted_during_a_walk_neither_repeat_nor_hide_older_ones(
    client: FlaskClient,
) -> None:
    older = _submit(client, 20)
    first = _page(client, limit=6)
    seen = [job["id"] for job in first["data"]]
    cursor = first["next_cursor"]
    newer = []
    while cursor is not None:
        newer += _submit(client, 3)  # between every two pages
        page = _page(client, limit=6, cursor=cursor)
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
    assert seen == older[::-1]
    assert _walk(client, limit=100) == (older + newer)[::-1]


def test_a_status_filter(client: FlaskClient) -> None:
    ids = _submit(client, 6)
    for job_id in ids[1:3]:
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert _walk(client, status="canceled") == [ids[2], ids[1]]
    assert _walk(client, status="queued") == [ids[5], ids[4], ids[3], ids[0]]
    assert _walk(client, status="queued,canceled", limit=4) == ids[::-1]
    repeated = client.get("/v1/jobs?status=canceled&status=succeeded").json
    assert [job["id"] for job in repeated["data"]] == [ids[2], ids[1]]
    assert all(job["status"] == "canceled" for job in repeated["data"])


def test_created_after_lists_jobs_newer_than_a_moment(client: FlaskClient) -> None:
    first = _submit(client, 2)
    time.sleep(0.002)  # the next jobs are created in a later millisecond than these
    later = _submit(client, 2)
    mark = client.get(f"/v1/jobs/{first[-1]}").json["created_at"]
    assert _walk(client, created_after=mark) == later[::-1]
    assert _walk(client, created_after=mark, limit=1) == later[::-1]
    assert _walk(client, created_after="1") == (first + later)[::-1]
    future = str(int(time.time()) + 3600)
    assert _page(client, created_after=future) == {"data": [], "next_cursor": None}


def test_another_keys_jobs_never_appear(
    make_app: Callable[..., Flask], settings: Settings, redis_client: redis.Redis
) -> None:
    client = make_app(replace(settings, auth="required")).test_client()
    keys = ApiKeyStore(redis_client)
    alice = {"Authorization": f"Bearer {keys.create('alice')[1]}"}
    bob = {"Authorization": f"Bearer {keys.create('bob')[1]}"}
    hers = _submit(client, 9, alice)
    his = _submit(client, 4, bob)
    assert _walk(client, alice, limit=4) == hers[::-1]
    assert _walk(client, bob, limit=4) == his[::-1]
    # Her cursor in his hands walks his jobs (older than her position), never hers.
    cursor = _page(client, alice, limit=2)["next_cursor"]
    assert set(_walk(client, bob, cursor=cursor)) <= set(his)
    refused = client.get("/v1/jobs")
    assert refused.status_code == 401
    assert refused.json["error"]["code"] == "unauthorized"


def test_expired_jobs_disappear(client: FlaskClient, redis_client: redis.Redis) -> None:
    kept, expiring = _submit(client, 2)
    redis_client.pexpire(job_key(expiring), 1)  # its retention runs out now
    while redis_client.exists(job_key(expiring)):
        time.sleep(0.01)
    assert _walk(client) == [kept]
    assert redis_client.zscore(owner_jobs_key(""), expiring) is None


def test_no_jobs_is_an_empty_page(client: FlaskClient) -> None:
    assert _page(client) == {"data": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("limit=0", 422, "invalid_parameter"),
        ("limit=101", 422, "invalid_parameter"),
        ("limit=ten", 422, "invalid_parameter"),
        ("status=done", 422, "invalid_parameter"),
        ("status=", 422, "invalid_parameter"),
        ("created_after=yesterday", 422, "invalid_parameter"),
        ("created_after=2026-11-24T14:00:00", 422, "invalid_parameter"),
        ("cursor=abc", 400, "invalid_cursor"),
        ("cursor=", 400, "invalid_cursor"),
        (f"cursor={Position(1.0, 'f' * 32).to_cursor()[:-2]}", 400, "invalid_cursor"),
    ],
)
def test_bad_parameters_are_refused_with_a_code(
    client: FlaskClient, query: str, status: int, code: str
) -> None:
    reply = client.get(f"/v1/jobs?{query}")
    assert reply.status_code == status
    assert reply.json["error"]["code"] == code
    assert reply.json["error"]["message"]
