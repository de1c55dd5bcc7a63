"""``GET /metrics`` of a real ``internvl-queue api`` with two gunicorn processes: the numbers move
as jobs go through a real worker (the tiny model), the same whichever process answers, and
nothing of a job's content shows."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.settings import Settings
from internvl_queue.core.store import JobStore
from internvl_queue.queue import RUN_JOB_TASK, create_celery
from tests.api.api_process import ApiProcess
from tests.api.lifecycle_helpers import json_body
from tests.conftest import WorkerProcess

QUESTION = "Which animal is this? [metrics-test]"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[str, Samples]:
    reply = requests.get(f"{url}/metrics", timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }
    return reply.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def _api(redis_url: str, tmp_path: Path, queue: str) -> ApiProcess:
    process = ApiProcess(
        redis_url,
        tmp_path / "api.log",
        options=("--workers", "2"),
        INTERNVL_QUEUE=queue,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
    )
    process.wait_ready()
    return process


@pytest.fixture
def api_with_worker(
    settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> Iterator[ApiProcess]:
    process = _api(settings.redis_url, tmp_path, settings.queue_name)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def api_alone(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[ApiProcess]:
    # No worker consumes this queue: its jobs stay queued.
    process = _api(redis_url, tmp_path, "internvl-metrics-no-worker")
    try:
        yield process
    finally:
        process.stop()


def _finished(url: str, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict[str, object] = requests.get(f"{url}/v1/jobs/{job_id}?wait=20", timeout=30).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
    raise TimeoutError(f"job {job_id} did not finish")


def test_five_jobs_move_the_counters_by_five(
    api_with_worker: ApiProcess,
    worker: WorkerProcess,
    settings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    url = api_with_worker.url
    _, before = scrape(url)
    ids = []
    for _ in range(5):  # a connection each: gunicorn hands them to either process
        reply = requests.post(f"{url}/v1/jobs", json=json_body(QUESTION), timeout=30)
        assert reply.status_code == 202, reply.text
        ids.append(reply.json()["id"])
    assert all(_finished(url, job_id)["status"] == "succeeded" for job_id in ids)
    worker.info_after(time.time())  # its engine counters are as of a heartbeat after the jobs

    text, after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("internvl_queue_jobs_submitted_total") == 5
    assert delta("internvl_queue_jobs_finished_total", status="succeeded") == 5
    assert delta("internvl_queue_jobs_finished_total", status="failed") == 0
    for name in ("queued_seconds", "preprocess_seconds", "inference_seconds", "batch_size"):
        assert delta(f"internvl_queue_job_{name}_count") == 5, name
    assert delta("internvl_queue_job_total_seconds_count", status="succeeded") == 5
    assert delta("internvl_queue_job_total_seconds_sum", status="succeeded") > 0
    assert delta("internvl_queue_job_inference_seconds_sum") > 0
    # Every job lies in the +Inf bucket, and the buckets are cumulative.
    assert delta("internvl_queue_job_inference_seconds_bucket", le="+Inf") == 5
    tokens = delta("internvl_queue_generated_tokens_total")
    assert tokens == delta("internvl_queue_job_generated_tokens_sum") > 0

    # The worker, as its heartbeat shows it; on the CPU it reports no GPU memory.
    me = worker.info()
    labels = {"worker": me.name, "state": "ready", "queue": settings.queue_name}
    assert value(after, "internvl_queue_worker_info", **labels) == 1
    assert value(after, "internvl_queue_workers", state="ready", queue=settings.queue_name) >= 1
    assert value(after, "internvl_queue_worker_batched_jobs_total", worker=me.name) >= 5
    assert not [n for n, _ in after if n.startswith("internvl_queue_worker_gpu_memory")]
    assert value(after, "internvl_queue_redis_up") == 1

    # HTTP requests by route template and status, added up over both processes: whichever
    # process answers a scrape says the same. (Each process writes its own counter file; more
    # requests, each on a new connection, until both have answered some.)
    counted = tmp_path / "prometheus"
    for _ in range(200):
        if len(list(counted.glob("counter_*.db"))) == 2:
            break
        requests.get(f"{url}/healthz", timeout=10)
    assert len(list(counted.glob("counter_*.db"))) == 2, "one process answered every request"
    for _ in range(6):
        _, again = scrape(url)
        submits = value(again, "internvl_queue_http_requests_total", route="/v1/jobs")
        assert submits - value(before, "internvl_queue_http_requests_total", route="/v1/jobs") == 5
    assert (
        value(
            after,
            "internvl_queue_http_requests_total",
            method="GET",
            route="/v1/jobs/<job_id>",
            status="200",
        )
        >= 5
    )
    # Every metric served is documented.
    documented = {
        re.sub(r"_total$", "", n) for n in re.findall(r"`(internvl_queue_\w+)`", DOCS.read_text())
    }
    served = {family.name for family in text_string_to_metric_families(text)}
    assert served - documented == set()
    # No job id, question or answer in the output: routes are templates, labels fixed sets.
    assert not [job_id for job_id in ids if job_id in text]
    assert QUESTION not in text and "metrics-test" not in text

    # A job the worker fails (an image that cannot be decoded, stored past the API's checks)
    # counts under its error code.
    job = Job.new("q", JobParams(max_new_tokens=4, max_tiles=1), image_count=1)
    JobStore(redis_client, retention_s=60).create(job, [b"definitely not an image"])
    create_celery(settings).send_task(RUN_JOB_TASK, args=[job.id], queue=settings.queue_name)
    assert _finished(url, job.id)["status"] == "failed"
    _, failed = scrape(url)
    code = {"status": "failed", "code": "image_decode_error"}
    assert value(failed, "internvl_queue_jobs_finished_total", **code) == (
        value(after, "internvl_queue_jobs_finished_total", **code) + 1
    )


def test_queued_jobs_show_in_the_queue_depth_and_a_cancel_counts(
    api_alone: ApiProcess, redis_client: redis.Redis
) -> None:
    url = api_alone.url
    ids = [
        requests.post(f"{url}/v1/jobs", json=json_body(), timeout=30).json()["id"] for _ in range(3)
    ]
    _, queued = scrape(url)
    assert value(queued, "internvl_queue_jobs_queued") == 3
    assert (
        value(queued, "internvl_queue_broker_queue_messages", queue="internvl-metrics-no-worker")
        == 3
    )
    assert value(queued, "internvl_queue_oldest_queued_job_age_seconds") >= 0
    assert value(queued, "internvl_queue_workers") == 0

    assert requests.post(f"{url}/v1/jobs/{ids[0]}/cancel", timeout=10).status_code == 200
    assert requests.get(f"{url}/v1/jobs/unknown", timeout=10).status_code == 404
    assert requests.get(f"{url}/no/such/page", timeout=10).status_code == 404
    _, after = scrape(url)
    assert value(after, "internvl_queue_jobs_queued") == 2
    assert value(after, "internvl_queue_jobs_submitted_total") == 3
    canceled = {"status": "canceled", "code": "canceled"}
    assert value(after, "internvl_queue_jobs_finished_total", **canceled) == 1
    routes = {
        (labels["route"], labels["status"])
        for (name, found), _ in after.items()
        if name == "internvl_queue_http_requests_total"
        for labels in [dict(found)]
    }
    assert {
        ("/v1/jobs", "202"),
        ("/v1/jobs/<job_id>/cancel", "200"),
        ("/v1/jobs/<job_id>", "404"),
        ("unmatched", "404"),
        ("/metrics", "200"),
        ("/healthz", "200"),
    } <= routes
