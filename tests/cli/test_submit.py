"""``internvl-queue submit`` against the live API and a real worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from internvl_queue.cli import main
from tests.conftest import WorkerProcess
from tests.images import photo


def test_submit_prints_the_job_or_waits_for_the_answer(
    live_api: str, worker: WorkerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(photo(60, 40, seed=5))
    assert (
        main(["submit", str(image), "-q", "What?", "--api", live_api, "--max-new-tokens", "5"]) == 0
    )
    job = json.loads(capsys.readouterr().out)
    assert job["status"] == "queued" and job["params"]["max_new_tokens"] == 5

    assert (
        main(
            [
                "submit",
                str(image),
                "-q",
                "What?",
                "--api",
                live_api,
                "--max-new-tokens",
                "5",
                "--wait",
            ]
        )
        == 0
    )
    answer = capsys.readouterr().out.strip()
    assert answer  # the model's answer, printed alone


def test_submit_reports_a_refused_request(
    live_api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    assert main(["submit", str(not_an_image), "-q", "What?", "--api", live_api]) == 1
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "unsupported_image"
