"""The whole path with real parts: HTTP API -> Redis -> a real Celery worker process holding the
tiny InternVL checkpoint -> the answer read back by id."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
import requests

from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.settings import Settings
from internvl_queue.core.store import JobStore
from internvl_queue.queue import RUN_JOB_TASK, create_celery
from tests.conftest import WorkerProcess
from tests.images import photo
from tests.worker.reference import reference_answer


def _submit(api: str, images: list[bytes], question: str, **fields: Any) -> dict[str, Any]:
    files = [("image", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    reply = requests.post(
        f"{api}/v1/jobs", data={"question": question, **fields}, files=files, timeout=30
    )
    assert reply.status_code == 202, reply.text
    job: dict[str, Any] = reply.json()
    # Accepted at once, not after inference: the reply is the job as stored, still queued (a
    # bound on the seconds it took would time this machine's load, not the API).
    assert job["status"] == "queued" and job["result"] is None, job
    return job


def _wait(api: str, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = requests.get(f"{api}/v1/jobs/{job_id}", timeout=30).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish")


def test_answer_equals_reference(
    live_api: str, worker: WorkerProcess, tiny_model_dir: Path
) -> None:
    image = photo(320, 240, seed=3)
    job = _submit(
        live_api,
        [image],
        "What is in the picture?",
        max_new_tokens="12",
        metadata='{"trace": "t1"}',
    )
    done = _wait(live_api, job["id"])
    assert done["status"] == "succeeded", done
    expected, tiles = reference_answer(
        tiny_model_dir, [image], "What is in the picture?", max_new_tokens=12, max_tiles=12
    )
    result = done["result"]
    assert expected  # the tiny model answers something, so equality below means something
    assert result["answer"] == expected
    assert result["model"] == str(tiny_model_dir)
    assert result["usage"]["image_tiles"] == tiles
    assert 0 < result["usage"]["completion_tokens"] <= 12
    assert result["usage"]["prompt_tokens"] > tiles
    assert set(result["timings_ms"]) == {"queued", "preprocess", "inference", "total"}
    assert result["timings_ms"]["total"] >= result["timings_ms"]["inference"] > 0
    assert done["metadata"] == {"trace": "t1"}
    assert done["started_at"] and done["finished_at"] and done["error"] is None


def test_answers_depend_on_image_and_question(live_api: str, worker: WorkerProcess) -> None:
    a, b = photo(64, 64, seed=10), photo(64, 64, seed=11)
    jobs = [
        _submit(live_api, [img], q, max_new_tokens="8")
        for img, q in [(a, "What is it?"), (b, "What is it?"), (a, "Which colour dominates?")]
    ]
    answers = [_wait(live_api, j["id"])["result"]["answer"] for j in jobs]
    assert len(set(answers)) == 3, answers


def test_dynamic_tiling_and_several_images(
    live_api: str, worker: WorkerProcess, tiny_model_dir: Path
) -> None:
    wide = photo(896, 672, seed=4)
    tiled = _wait(live_api, _submit(live_api, [wide], "Describe.", max_new_tokens="6")["id"])
    single = _wait(
        live_api, _submit(live_api, [wide], "Describe.", max_new_tokens="6", max_tiles="1")["id"]
    )
    pair = _wait(
        live_api,
        _submit(live_api, [wide, photo(50, 50)], "Compare.", max_new_tokens="6", max_tiles="2")[
            "id"
        ],
    )
    assert tiled["result"]["usage"]["image_tiles"] > 1
    assert single["result"]["usage"]["image_tiles"] == 1
    for job, images, question, tiles in [
        (tiled, [wide], "Describe.", 12),
        (single, [wide], "Describe.", 1),
        (pair, [wide, photo(50, 50)], "Compare.", 2),
    ]:
        expected, n_tiles = reference_answer(
            tiny_model_dir, images, question, max_new_tokens=6, max_tiles=tiles
        )
        assert job["result"]["answer"] == expected
        assert job["result"]["usage"]["image_tiles"] == n_tiles


def test_fifty_jobs_at_once_each_finish_exactly_once(
    live_api: str, worker: WorkerProcess, settings: Settings, redis_client: redis.Redis
) -> None:
    before = worker.info()
    images = [photo(48, 48, seed=100 + i) for i in range(50)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        jobs = list(
            pool.map(lambda img: _submit(live_api, [img], "What?", max_new_tokens="4"), images)
        )
    ids = [j["id"] for j in jobs]
    assert len(set(ids)) == 50
    finished = [_wait(live_api, i, timeout=300) for i in ids]
    assert [j["status"] for j in finished] == ["succeeded"] * 50
    store = JobStore(redis_client, retention_s=60)
    assert {store.get(i).attempts for i in ids} == {1}  # type: ignore[union-attr]
    after = worker.info_after(time.time())  # a heartbeat taken after the last job finished
    assert after.jobs_succeeded - before.jobs_succeeded == 50
    assert after.jobs_failed == before.jobs_failed
    assert redis_client.llen(settings.queue_name) == 0


def _wait_for(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_redelivered_message_for_finished_job_is_ignored(
    live_api: str, worker: WorkerProcess, settings: Settings
) -> None:
    done = _wait(live_api, _submit(live_api, [photo(40, 40)], "Again?", max_new_tokens="4")["id"])
    assert done["status"] == "succeeded"
    ignored = worker.info_after(time.time()).redeliveries_ignored
    create_celery(settings).send_task(RUN_JOB_TASK, args=[done["id"]], queue=settings.queue_name)
    _wait_for(lambda: worker.info().redeliveries_ignored == ignored + 1)
    assert requests.get(f"{live_api}/v1/jobs/{done['id']}", timeout=10).json() == done


def test_bad_stored_image_fails_its_job_and_the_worker_keeps_serving(
    live_api: str, worker: WorkerProcess, settings: Settings, redis_client: redis.Redis
) -> None:
    # Bypass the API's validation, as a corrupted store would.
    job = Job.new("q", JobParams(max_new_tokens=4, max_tiles=1), image_count=1)
    JobStore(redis_client, retention_s=60).create(job, [b"definitely not an image"])
    create_celery(settings).send_task(RUN_JOB_TASK, args=[job.id], queue=settings.queue_name)
    failed = _wait(live_api, job.id)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "image_decode_error"
    assert failed["result"] is None
    after = _wait(
        live_api, _submit(live_api, [photo(40, 40)], "Still there?", max_new_tokens="4")["id"]
    )
    assert after["status"] == "succeeded"
    assert worker.process.poll() is None


def test_readyz_lists_the_worker(client, worker: WorkerProcess, tiny_model_dir: Path) -> None:
    reply = client.get("/readyz")
    assert reply.status_code == 200
    [info] = [w for w in reply.json["workers"] if w["pid"] == worker.process.pid]
    assert info["model"] == str(tiny_model_dir)
    assert info["device"] == "cpu"
    assert info["gpu_name"] is None
    assert info["loaded_at"] > 0


def test_concurrent_jobs_are_batched_and_equal_the_reference(
    live_api: str, worker: WorkerProcess, tiny_model_dir: Path
) -> None:
    before = worker.info_after(time.time()).engine or {}
    inputs = [
        (photo(40 + 17 * i, 40 + 9 * (i % 5), seed=200 + i), f"Question number {i}?", 3 + i % 7)
        for i in range(32)
    ]
    with ThreadPoolExecutor(max_workers=32) as pool:
        jobs = list(
            pool.map(
                lambda x: _submit(live_api, [x[0]], x[1], max_new_tokens=str(x[2]), max_tiles="4"),
                inputs,
            )
        )
    finished = [_wait(live_api, j["id"]) for j in jobs]
    after = worker.info_after(time.time()).engine or {}
    # The worker's own counters: 32 jobs in fewer than 32 batches, some of more than one job.
    jobs_batched = after["batched_jobs"] - before.get("batched_jobs", 0)
    batches = after["batches"] - before.get("batches", 0)
    assert jobs_batched == 32
    assert batches < 32
    assert max(j["result"]["batch_size"] for j in finished) > 1
    for (image, question, n), job in zip(inputs, finished, strict=True):
        expected, _ = reference_answer(
            tiny_model_dir, [image], question, max_new_tokens=n, max_tiles=4
        )
        assert job["result"]["answer"] == expected
