"""``Client`` against a real ``internvl-queue api`` (gunicorn), a real Redis and a real Celery
worker on the tiny model: answers equal the reference, refusals are typed with the API's code."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from internvl_queue.client import (
    Client,
    Conflict,
    JobStatus,
    NotFound,
    UnsupportedMediaType,
    ValidationFailed,
)
from internvl_queue.core.settings import Settings
from tests.api.api_process import ApiProcess
from tests.client.conftest import DEFAULT_MAX_NEW_TOKENS
from tests.images import photo
from tests.worker.reference import reference_answer

REPO = Path(__file__).resolve().parents[2]
CAT = REPO / "examples" / "cat.jpg"


def test_run_answers_as_the_reference_for_bytes_a_path_and_a_pil_image(
    client: Client, tiny_model_dir: Path, settings: Settings, tmp_path: Path
) -> None:
    as_bytes, on_disk, for_pil = (photo(96, 64, seed=seed) for seed in (21, 22, 23))
    path = tmp_path / "b.jpg"
    path.write_bytes(on_disk)
    pil = Image.open(io.BytesIO(for_pil))  # sent as PNG: the same pixels
    question = "What is in the picture?"
    cases = [([as_bytes], [as_bytes]), ([path], [on_disk]), ([pil], [for_pil])]
    cases.append(([as_bytes, str(path), pil], [as_bytes, on_disk, for_pil]))  # in order
    # All queued first: the worker batches them, as it would any callers' jobs.
    jobs = [client.submit(given, question, max_new_tokens=8) for given, _ in cases]
    for job, (_, sent) in zip(jobs, cases, strict=True):
        done = client.wait(job.id, timeout=120)
        assert done.status is JobStatus.SUCCEEDED, done
        expected, tiles = reference_answer(
            tiny_model_dir, sent, question, max_new_tokens=8, max_tiles=settings.max_tiles
        )
        assert done.result is not None
        assert expected and done.result.answer == expected
        assert done.result.usage.image_tiles == tiles
        assert 0 < done.result.usage.completion_tokens <= 8
        assert done.result.model == str(tiny_model_dir)
        assert set(done.result.timings_ms) == {"queued", "preprocess", "inference", "total"}
        assert done.params["max_new_tokens"] == 8
        assert done.finished_at is not None and done.error is None
    assert client.deliveries(jobs[0].id) == []  # no webhook asked for


def test_run_takes_every_option(client: Client) -> None:
    job = client.run(
        photo(48, 48, seed=3),
        "Describe.",
        max_new_tokens=4,
        max_tiles=1,
        timeout_s=60,
        metadata={"ref": "abc-1", "n": [1, 2]},
        idempotency_key="client-test-1",
    )
    assert job.params == {"max_new_tokens": 4, "max_tiles": 1, "timeout_s": 60}
    assert job.metadata == {"ref": "abc-1", "n": [1, 2]}
    assert job.result is not None and job.result.usage.image_tiles == 1
    # The same key and request: the same job, not a second one.
    again = client.submit(
        photo(48, 48, seed=3),
        "Describe.",
        max_new_tokens=4,
        max_tiles=1,
        timeout_s=60,
        metadata={"ref": "abc-1", "n": [1, 2]},
        idempotency_key="client-test-1",
    )
    assert again.id == job.id and again.status is JobStatus.SUCCEEDED


def test_refusals_raise_typed_errors_with_the_apis_code_and_message(client: Client) -> None:
    with pytest.raises(UnsupportedMediaType) as raised:
        client.submit(b"just some text", "What is it?")
    assert (raised.value.status, raised.value.code) == (415, "unsupported_image")
    assert raised.value.message  # the API's sentence
    with pytest.raises(ValidationFailed) as invalid:
        client.submit(photo(32, 32), "What is it?", max_tiles=99)
    assert (invalid.value.status, invalid.value.code) == (422, "invalid_parameter")
    assert "max_tiles" in invalid.value.message
    with pytest.raises(NotFound) as missing:
        client.get("0" * 32)
    assert (missing.value.status, missing.value.code) == (404, "job_not_found")
    done = client.run(photo(32, 32), "What is it?", max_new_tokens=2)
    with pytest.raises(Conflict) as finished:
        client.cancel(done.id)
    assert (finished.value.status, finished.value.code) == (409, "job_already_finished")


def test_the_one_line_of_the_readme_prints_the_reference_answer(
    api: ApiProcess, tiny_model_dir: Path, settings: Settings
) -> None:
    code = (
        "from internvl_queue.client import Client; "
        f"print(Client({api.url!r}).run(['examples/cat.jpg'], 'What is it?').result.answer)"
    )
    env = {k: v for k, v in os.environ.items() if k != "INTERNVL_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    expected, _ = reference_answer(
        tiny_model_dir,
        [CAT.read_bytes()],
        "What is it?",
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
        max_tiles=settings.max_tiles,
    )
    assert expected and done.stdout == f"{expected}\n"
