"""``Client``'s batches, priorities and image URLs against a real ``internvl-queue api``
(gunicorn), a real Redis and the suite's real worker on the tiny model."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest
from PIL import Image

from internvl_queue.client import (
    AsyncClient,
    Batch,
    Client,
    Conflict,
    NotFound,
    ValidationFailed,
)
from tests.api.api_process import ApiProcess
from tests.images import photo

QUESTION = "What is in the picture?"


def _finished(client: Client, batch: Batch, timeout_s: float = 240) -> Batch:
    deadline = time.monotonic() + timeout_s
    while not batch.is_finished:
        assert time.monotonic() < deadline, f"the batch is still {batch.status}: {batch.counts}"
        time.sleep(0.2)
        batch = client.get_batch(batch.id)
    return batch


def test_a_batch_of_paths_bytes_and_pil_images_runs_and_its_results_match_its_jobs(
    client: Client, tmp_path: Path
) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(photo(64, 48, seed=31))
    pil = Image.open(io.BytesIO(photo(64, 48, seed=32)))
    lines = [
        {"custom_id": "path", "question": QUESTION, "images": [path]},
        {"custom_id": "bytes", "question": QUESTION, "images": photo(48, 64, seed=33)},
        {"custom_id": "pil", "question": QUESTION, "images": [pil], "max_new_tokens": 4},
        {"custom_id": "bad", "question": "   ", "images": [path]},
    ]
    batch = client.submit_batch(lines, metadata={"run": "t1"})
    assert (batch.counts.total, batch.counts.invalid, batch.counts.jobs) == (4, 1, 3)
    assert [(e["custom_id"], e["line"]) for e in batch.errors] == [("bad", 4)]
    assert batch.metadata == {"run": "t1"}
    done = _finished(client, batch)
    assert done.status == "completed"
    assert done.counts.succeeded == 3
    results = list(client.batch_results(batch.id))
    assert [(r["custom_id"], r["status"]) for r in results] == [
        ("path", "succeeded"),
        ("bytes", "succeeded"),
        ("pil", "succeeded"),
        ("bad", "invalid"),
    ]
    for line in results[:3]:
        job = client.get(line["job_id"])
        assert job.result is not None
        assert line["result"]["answer"] == job.result.answer
    assert client.get(results[2]["job_id"]).params["max_new_tokens"] == 4


def test_all_or_nothing_refuses_a_batch_with_one_bad_line(client: Client) -> None:
    lines = [
        {"custom_id": "ok", "question": QUESTION, "images": [photo(32, 32, seed=1)]},
        {
            "custom_id": "bad",
            "question": QUESTION,
            "images": [photo(32, 32, seed=2)],
            "max_tiles": 99,
        },
    ]
    with pytest.raises(ValidationFailed) as refused:
        client.submit_batch(lines, all_or_nothing=True)
    assert refused.value.code == "batch_invalid"


def test_cancel_batch_stops_what_has_not_run_and_a_second_cancel_conflicts(
    client: Client,
) -> None:
    image = photo(64, 64, seed=5)
    lines = [
        {"custom_id": f"n{i}", "question": QUESTION, "images": [image], "max_new_tokens": 16}
        for i in range(40)
    ]
    batch = client.submit_batch(lines)
    canceled = client.cancel_batch(batch.id)
    assert canceled.cancel_requested_at is not None
    done = _finished(client, canceled)
    assert done.status == "canceled"
    assert done.counts.canceled > 0
    assert done.counts.pending == 0
    statuses = {line["status"] for line in client.batch_results(batch.id)}
    assert "canceled" in statuses
    assert statuses <= {"succeeded", "canceled"}
    with pytest.raises(Conflict) as finished:
        client.cancel_batch(batch.id)
    assert finished.value.code == "batch_already_finished"


def test_an_unknown_batch_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound) as missing:
        client.get_batch("b_nothere")
    assert missing.value.code == "batch_not_found"


def test_priority_is_sent_and_checked(client: Client) -> None:
    image = photo(32, 32, seed=7)
    low = client.submit(image, QUESTION, priority="low")
    assert low.raw["priority"] == "low"
    high = client.run(image, QUESTION, priority="high")
    assert high.raw["priority"] == "high"
    assert high.result is not None
    with pytest.raises(ValidationFailed) as refused:
        client.submit(image, QUESTION, priority="urgent")
    assert refused.value.code == "invalid_parameter"


@pytest.mark.parametrize(
    "image", ["http://127.0.0.1:9/cat.jpg", {"url": "https://127.0.0.1:9/cat.jpg"}]
)
def test_an_image_url_is_sent_as_a_url_for_the_api_to_fetch(
    client: Client, image: str | dict[str, str]
) -> None:
    # The API fetches it (and refuses loopback): the refusal shows the URL went as a URL, not
    # as a path or bytes; the file image beside it is sent too (JSON keeps their order).
    with pytest.raises(ValidationFailed) as refused:
        client.submit([photo(32, 32, seed=8), image], QUESTION)
    assert refused.value.code == "image_url_not_allowed"


def test_a_batch_line_may_name_an_image_by_url(client: Client) -> None:
    lines = [{"custom_id": "u", "question": QUESTION, "images": ["http://127.0.0.1:9/x.jpg"]}]
    batch = client.submit_batch(lines)
    assert batch.status == "failed"  # its only line was refused
    assert [e["code"] for e in batch.errors] == ["image_url_not_allowed"]


def test_the_async_client_submits_reads_and_cancels_batches(api: ApiProcess) -> None:
    async def go() -> tuple[Batch, Batch, list[dict[str, object]]]:
        async with AsyncClient(api.url, api_key="") as client:
            lines = [
                {"custom_id": f"a{i}", "question": QUESTION, "images": [photo(32, 32, seed=i)]}
                for i in range(3)
            ]
            made = await client.submit_batch(lines)
            read = await client.get_batch(made.id)
            results = list(await client.batch_results(made.id))
            return made, read, results

    made, read, results = asyncio.run(go())
    assert read.id == made.id
    assert read.counts.jobs == 3
    assert [r["custom_id"] for r in results] == ["a0", "a1", "a2"]
