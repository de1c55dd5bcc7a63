"""The result cache through real parts: the API (behind a real HTTP server), Redis, a real worker
process holding the tiny checkpoint with the cache on, a real webhook worker and a receiver.

A second identical job is answered at submit from the first one's answer, with no GPU batch;
``cache: false`` and any change in what decides an answer run the model again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask

from internvl_queue.api.openapi import openapi_document
from internvl_queue.core.apikeys import ApiKeyStore
from internvl_queue.core.settings import Settings
from tests.api.test_openapi_spec import _validator
from tests.conftest import WorkerProcess, serving
from tests.images import photo
from tests.receiver import Receiver, wait_until
from tests.webhooks.worker_process import NEW_SECRET, WebhookWorker

QUEUE = "internvl-result-cache-tests"
TTL_S = 600
IMAGE = photo(64, 48, seed=21)


@pytest.fixture(scope="module")
def cache_settings(redis_server_url: str, tiny_model_dir: Path) -> Settings:
    return Settings(
        redis_url=redis_server_url,
        queue_name=QUEUE,
        model=str(tiny_model_dir),
        device="cpu",
        heartbeat_interval_s=0.5,
        default_max_new_tokens=8,
        auth="open",
        result_cache_ttl_s=TTL_S,
        webhook_secrets=NEW_SECRET,
        webhook_allowed_cidrs="127.0.0.0/8",
    )


@pytest.fixture(scope="module")
def cache_worker(
    cache_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A real worker with the result cache on (the suite's shared worker has it off)."""
    worker = WorkerProcess(
        cache_settings,
        tmp_path_factory.mktemp("cache-logs") / "worker.log",
        INTERNVL_RESULT_CACHE_TTL_S=str(TTL_S),
    )
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def api(
    cache_settings: Settings,
    cache_worker: WorkerProcess,
    redis_client: redis.Redis,  # empties Redis around each test
    make_app: Callable[..., Flask],
) -> Iterator[str]:
    with serving(make_app(cache_settings)) as url:
        yield url


def _submit(
    api: str, question: str = "What is it?", image: bytes = IMAGE, **fields: Any
) -> dict[str, Any]:
    reply = requests.post(
        f"{api}/v1/jobs",
        data={"question": question, "max_new_tokens": "6", **fields},
        files=[("image", ("a.png", image, "image/png"))],
        timeout=30,
    )
    assert reply.status_code == 202, reply.text
    job: dict[str, Any] = reply.json()
    return job


def _finished(api: str, job_id: str) -> dict[str, Any]:
    reply = requests.get(f"{api}/v1/jobs/{job_id}", params={"wait": "60"}, timeout=90)
    job: dict[str, Any] = reply.json()
    assert job["status"] == "succeeded", job
    return job


def _batches(worker: WorkerProcess) -> int:
    """Batches the worker's engine has run, as of a heartbeat published from now on."""
    moment = time.time()
    worker.wait_ready(timeout=10)  # its heartbeat is back after the test emptied Redis
    engine = worker.info_after(moment).engine
    assert engine is not None
    return int(engine["batches"])


def test_an_identical_job_is_answered_at_submit_without_the_gpu(
    api: str, cache_worker: WorkerProcess, cache_settings: Settings
) -> None:
    first = _finished(api, _submit(api)["id"])
    assert first["result"]["cached"] is False and first["result"]["batch_size"] >= 1
    batches = _batches(cache_worker)

    # Another deadline and other metadata do not change the answer: still a hit.
    second = _submit(api, timeout_s="120", metadata='{"run": 2}')
    assert second["status"] == "succeeded"  # already, in the submit's own reply
    result = second["result"]
    assert result["cached"] is True
    assert result["answer"] == first["result"]["answer"]
    assert result["model"] == first["result"]["model"]
    assert result["usage"] == first["result"]["usage"]
    assert result["batch_size"] is None
    timings = result["timings_ms"]
    assert timings["queued"] == timings["preprocess"] == timings["inference"] == 0
    # Its only time is the API's own, from the job's creation to its answer (no bound on it:
    # that would time this machine; the batch count below shows no GPU ran).
    created, finished = (datetime.fromisoformat(second[f]) for f in ("created_at", "finished_at"))
    assert timings["total"] == pytest.approx((finished - created).total_seconds() * 1000, abs=2)
    assert second["metadata"] == {"run": 2} and second["params"]["timeout_s"] == 120
    assert _finished(api, second["id"]) == second  # stored as answered
    document = openapi_document(cache_settings)
    _validator(document)(document["components"]["schemas"]["Job"]).validate(second)
    assert _batches(cache_worker) == batches  # no GPU batch ran for it
    metrics = requests.get(f"{api}/metrics", timeout=10).text
    assert "internvl_queue_result_cache_hits_total 1.0" in metrics
    listed = requests.get(f"{api}/v1/jobs", timeout=10).json()["data"]
    assert [job["id"] for job in listed] == [second["id"], first["id"]]  # listed like the rest


def test_cache_false_and_any_answer_changing_difference_run_the_model(
    api: str, cache_worker: WorkerProcess
) -> None:
    _finished(api, _submit(api)["id"])
    batches = _batches(cache_worker)
    misses = [
        _submit(api, cache="false"),
        _submit(api, question="What colour is it?"),
        _submit(api, max_new_tokens="5"),
        _submit(api, max_tiles="1"),
        _submit(api, image=photo(64, 48, seed=22)),
    ]
    for job in misses:
        done = _finished(api, job["id"])
        assert done["result"]["cached"] is False and done["result"]["batch_size"] >= 1
    assert _batches(cache_worker) > batches
    # The first job's entry is still there: cache: false skipped it, it did not remove it.
    assert _submit(api)["result"]["cached"] is True


def test_a_hit_still_sends_the_jobs_webhooks(
    api: str,
    cache_settings: Settings,
    tmp_path: Path,
) -> None:
    _finished(api, _submit(api)["id"])
    receiver = Receiver().start()
    hooks = WebhookWorker(cache_settings.redis_url, tmp_path / "webhooks.log")
    try:
        hit = _submit(
            api,
            webhook_url=receiver.url,
            webhook_events="job.started,job.succeeded",
        )
        assert hit["result"]["cached"] is True
        wait_until(lambda: len(receiver.received) >= 2, 30, "two webhooks", hooks.log())
        bodies = [json.loads(r.body) for r in receiver.received]
        assert sorted(b["type"] for b in bodies) == ["job.started", "job.succeeded"]
        succeeded = next(b for b in bodies if b["type"] == "job.succeeded")
        assert succeeded["data"]["id"] == hit["id"]
        assert succeeded["data"]["result"]["cached"] is True
        assert all(r.headers["webhook-signature"].startswith("v1,") for r in receiver.received)
    finally:
        hooks.kill()
        hooks.close()
        receiver.stop()


def test_hits_are_per_api_key(
    cache_settings: Settings,
    cache_worker: WorkerProcess,
    redis_client: redis.Redis,
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(replace(cache_settings, auth="required"))
    keys = ApiKeyStore(redis_client)
    one, two = keys.create("one")[1], keys.create("two")[1]
    with serving(app) as url:

        def submit(secret: str) -> dict[str, Any]:
            reply = requests.post(
                f"{url}/v1/jobs",
                headers={"Authorization": f"Bearer {secret}"},
                data={"question": "Who asked?", "max_new_tokens": "6"},
                files=[("image", ("a.png", IMAGE, "image/png"))],
                timeout=30,
            )
            assert reply.status_code == 202, reply.text
            job: dict[str, Any] = reply.json()
            done = requests.get(
                f"{url}/v1/jobs/{job['id']}",
                params={"wait": "60"},
                headers={"Authorization": f"Bearer {secret}"},
                timeout=90,
            ).json()
            assert done["status"] == "succeeded", done
            return done

        assert submit(one)["result"]["cached"] is False
        assert submit(one)["result"]["cached"] is True
        # Key two has never asked: it learns nothing of key one's question.
        assert submit(two)["result"]["cached"] is False
