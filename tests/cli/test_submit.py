"""``internvl-queue submit`` as a user runs it (a subprocess) against a live API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import requests
from flask import Flask

from internvl_queue.cli import local_service
from internvl_queue.cli.local_service import RunningService
from internvl_queue.cli.redis_server import free_port
from internvl_queue.core.keys import queued_key
from internvl_queue.core.settings import Settings
from tests.api.test_webhook_submit import SECRET
from tests.conftest import WorkerProcess, serving
from tests.images import photo

HOOK = "http://127.0.0.1:9/hook"
SUBMIT = [sys.executable, "-m", "internvl_queue", "submit"]


@pytest.fixture
def app(settings: Settings, make_app: Callable[..., Flask]) -> Flask:
    """The API of ``live_api``, with webhooks to loopback allowed."""
    return make_app(replace(settings, webhook_secrets=SECRET, webhook_allowed_cidrs="127.0.0.0/8"))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "a.jpg"
    path.write_bytes(photo(60, 40, seed=5))
    return path


def environment(**changes: str) -> dict[str, str]:
    """The caller's environment without the variables that name an API or a key."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("INTERNVL_API", "INTERNVL_API_KEY", "INTERNVL_DATA_DIR")
    }
    return {**env, **changes}


def submit_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SUBMIT, *args],
        env=env or environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(done: subprocess.CompletedProcess[str], status: int) -> str:
    """The single stderr line of a failed run (no traceback), checked."""
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("internvl-queue submit: ")
    return line


def test_every_option_reaches_the_job_and_the_api_is_found_through_up(
    live_api: str,
    redis_url: str,
    image: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No --api, no INTERNVL_API: the API of the running ``up`` (this test process stands in).
    RunningService(os.getpid(), redis_url, live_api).write(tmp_path)
    env = environment(INTERNVL_DATA_DIR=str(tmp_path))
    monkeypatch.delenv("INTERNVL_API", raising=False)
    monkeypatch.setenv("INTERNVL_DATA_DIR", str(tmp_path))
    assert local_service.api_url() == live_api  # else the run below would go elsewhere
    options = [
        *("--max-new-tokens", "5", "--max-tiles", "2", "--timeout", "30"),
        *("--metadata", '{"ref": "abc-1"}', "--webhook-url", HOOK),
        *("--webhook-events", "job.started,job.failed", "--idempotency-key", "retry-me-1"),
    ]
    done = submit_cli(str(image), "-q", "What?", *options, env=env)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "queued"
    assert job["params"] == {"max_new_tokens": 5, "max_tiles": 2, "timeout_s": 30}
    assert job["metadata"] == {"ref": "abc-1"}
    assert job["webhook"] == {"url": HOOK, "events": ["job.started", "job.failed"]}
    # The same Idempotency-Key returns the same job instead of a second one.
    again = submit_cli(str(image), "-q", "What?", *options, env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["id"] == job["id"]


def test_wait_prints_the_answer(live_api: str, worker: WorkerProcess, image: Path) -> None:
    done = submit_cli(
        str(image), "-q", "What?", "--api", live_api, "--max-new-tokens", "5", "--wait"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()  # the model's answer, printed alone
    assert done.stderr == ""


class NoWorker:
    """A dispatcher that sends jobs nowhere: they stay queued, as with no worker running."""

    def dispatch(self, job_id: str, priority: object = None) -> None:
        pass


@pytest.fixture
def api_without_workers(settings: Settings, make_app: Callable[..., Flask]) -> Iterator[str]:
    with serving(make_app(settings, dispatcher=NoWorker())) as url:
        yield url


def test_wait_gives_up_once_the_jobs_own_deadline_has_passed(
    api_without_workers: str, image: Path
) -> None:
    started = time.monotonic()
    done = submit_cli(
        str(image), "-q", "What?", "--api", api_without_workers, "--timeout", "1", "--wait"
    )
    took = time.monotonic() - started
    line = one_line_error(done, 3)
    assert "is still queued 10 s after its deadline (timeout_s=1)" in line
    assert 11 <= took < 30  # the deadline plus the margin, not the old fixed 600 s


def test_wait_reports_a_job_that_ends_without_an_answer(
    api_without_workers: str, image: Path, redis_client: redis.Redis
) -> None:
    waiting = subprocess.Popen(
        [*SUBMIT, str(image), "-q", "What?", "--wait", "--api", api_without_workers],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (queued := redis_client.zrange(queued_key(), 0, -1)):
            assert time.monotonic() < deadline and waiting.poll() is None, waiting.communicate()
            time.sleep(0.05)
        [job_id] = [raw.decode() for raw in queued]
        canceled = requests.post(f"{api_without_workers}/v1/jobs/{job_id}/cancel", timeout=10)
        assert canceled.status_code == 200
        out, err = waiting.communicate(timeout=30)  # the long poll wakes at once
        assert waiting.returncode == 1 and out == ""
        assert err.strip() == (
            f"internvl-queue submit: job {job_id} canceled (canceled): "
            "the job was canceled before it ran"
        )
    finally:
        if waiting.poll() is None:  # the test failed before the command ended
            waiting.kill()
            waiting.communicate()


def test_an_image_that_cannot_be_read_is_one_line(live_api: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    line = one_line_error(submit_cli(str(missing), "-q", "What?", "--api", live_api), 2)
    assert (
        line
        == f"internvl-queue submit: cannot read image {str(missing)!r}: No such file or directory"
    )
    line = one_line_error(submit_cli(str(tmp_path), "-q", "What?", "--api", live_api), 2)
    assert "cannot read image" in line and "Is a directory" in line


@pytest.mark.parametrize(
    ("metadata", "says"),
    [("{ref: 1}", "--metadata is not valid JSON"), ("[1, 2]", "--metadata must be a JSON object")],
)
def test_bad_metadata_is_one_line(live_api: str, image: Path, metadata: str, says: str) -> None:
    done = submit_cli(str(image), "-q", "What?", "--api", live_api, "--metadata", metadata)
    assert says in one_line_error(done, 2)


@pytest.mark.parametrize(
    ("make_args", "says"),
    [
        (
            lambda image, text: [str(text)],
            "the API refused the job (415 unsupported_image): ",
        ),
        (
            lambda image, text: [str(image), "--webhook-events", "job.done"],
            "the API refused the job (422 invalid_parameter): unknown webhook event 'job.done'",
        ),
    ],
)
def test_a_refused_request_is_one_line_with_the_code_and_message(
    live_api: str,
    image: Path,
    tmp_path: Path,
    make_args: Callable[[Path, Path], list[str]],
    says: str,
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    args = [*make_args(image, text), "-q", "What?", "--api", live_api, "--webhook-url", HOOK]
    assert says in one_line_error(submit_cli(*args), 1)


def test_an_api_that_does_not_answer_is_one_line(image: Path) -> None:
    api = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(submit_cli(str(image), "-q", "What?", "--api", api), 1)
    assert line == (
        f"internvl-queue submit: cannot reach the API at {api}; start it (internvl-queue up), "
        "or name another with --api or INTERNVL_API"
    )
