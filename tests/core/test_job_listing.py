"""The listing query and its cursor: what is accepted, and the code of what is not."""

from __future__ import annotations

import base64

import pytest

from internvl_queue.core.errors import BadRequest, ValidationFailed
from internvl_queue.core.job_listing import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ListQuery,
    Position,
    parse_list_query,
)
from internvl_queue.core.status import JobStatus

JOB_ID = "6f1c2a9d0b3e4f5a8c7d6e5f4a3b2c1d"


def test_defaults() -> None:
    assert parse_list_query() == ListQuery(limit=DEFAULT_LIMIT)


def test_a_cursor_names_its_position_exactly() -> None:
    position = Position(1795528800.123456, JOB_ID)
    cursor = position.to_cursor()
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert parse_list_query(cursor=cursor).after == position


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not a cursor",
        "%%%",
        base64.urlsafe_b64encode(f"2:1.5:{JOB_ID}".encode()).decode(),  # another version
        base64.urlsafe_b64encode(f"1:nan:{JOB_ID}".encode()).decode(),
        base64.urlsafe_b64encode(b"1:1.5:not-an-id").decode(),
        base64.urlsafe_b64encode(b"1:1.5").decode(),
    ],
)
def test_a_cursor_not_of_ours_is_a_400(cursor: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_list_query(cursor=cursor)
    assert refused.value.code == "invalid_cursor"


@pytest.mark.parametrize("limit", ["1", "7", str(MAX_LIMIT)])
def test_limits_in_range(limit: str) -> None:
    assert parse_list_query(limit=limit).limit == int(limit)


@pytest.mark.parametrize("limit", ["", "0", "-1", str(MAX_LIMIT + 1), "7.0", "seven", "٣"])
def test_limits_out_of_range_are_a_422(limit: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        parse_list_query(limit=limit)
    assert refused.value.code == "invalid_parameter"
    assert "limit" in refused.value.message


def test_statuses_repeated_or_comma_separated() -> None:
    query = parse_list_query(statuses=["queued,running", "failed"])
    assert query.statuses == {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED}


@pytest.mark.parametrize("statuses", [[""], ["done"], ["queued,"], ["QUEUED"]])
def test_unknown_statuses_are_a_422(statuses: list[str]) -> None:
    with pytest.raises(ValidationFailed) as refused:
        parse_list_query(statuses=statuses)
    assert refused.value.code == "invalid_parameter"
    assert "status" in refused.value.message


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("1795528800", 1795528800.0),
        ("1795528800.5", 1795528800.5),
        ("1.5e-05", 1.5e-05),
        ("2026-11-24T14:00:00Z", 1795528800.0),
        ("2026-11-24T14:00:00.123Z", 1795528800.123),
        ("2026-11-24T15:00:00+01:00", 1795528800.0),
    ],
)
def test_created_after_as_unix_seconds_or_iso_8601(raw: str, seconds: float) -> None:
    assert parse_list_query(created_after=raw).created_after == pytest.approx(seconds)


@pytest.mark.parametrize(
    "raw", ["", "-1", "nan", "inf", "1_000", "2026-11-24", "2026-11-24T14:00:00", "yesterday"]
)
def test_created_after_otherwise_is_a_422(raw: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        parse_list_query(created_after=raw)
    assert refused.value.code == "invalid_parameter"
    assert "created_after" in refused.value.message
