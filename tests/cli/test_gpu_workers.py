"""``internvl-queue worker --gpus``: one worker process per GPU, supervised by one parent.

On this CPU-only machine the children run the tiny model on the CPU (INTERNVL_DEVICE=cpu), but
everything else is as on a GPU host: two or three real worker processes, each with its own
CUDA_VISIBLE_DEVICES and heartbeat, sharing one Redis queue.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from flask import Flask

from internvl_queue.cli.gpu_workers import child_env, group_gpus, parse_gpus
from internvl_queue.core.settings import Settings
from internvl_queue.core.status import JobStatus
from internvl_queue.core.store import JobStore
from internvl_queue.core.workers import WorkerInfo, WorkerRegistry
from tests.api.lifecycle_helpers import json_body
from tests.conftest import worker_env


def test_gpu_lists_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert parse_gpus("0,1") == [0, 1]
    assert parse_gpus("3") == [3]
    assert parse_gpus("all", count=lambda: 4) == [0, 1, 2, 3]
    for bad in ("", "a", "0,0", "-1", "0,,1", "0,1,1,2"):
        with pytest.raises(ValueError):
            parse_gpus(bad)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        parse_gpus("all", count=lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert parse_gpus("1") == [1]
    with pytest.raises(ValueError):
        parse_gpus("2")


def test_gpus_are_grouped_for_workers_that_span_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    four = lambda: 4  # noqa: E731  (a host with four GPUs)
    assert group_gpus(parse_gpus("0,1,2,3"), 2) == [[0, 1], [2, 3]]
    assert group_gpus(parse_gpus("all", count=four), 2) == [[0, 1], [2, 3]]
    assert group_gpus(parse_gpus("all", count=four), 4) == [[0, 1, 2, 3]]
    assert group_gpus(parse_gpus("all", count=four), 1) == [[0], [1], [2], [3]]
    assert group_gpus(parse_gpus("3,1,2,0"), 2) == [[3, 1], [2, 0]]  # in the order listed

    # Each child sees its group alone, spans it, and reports the host's indices.
    env = child_env([2, 3], {"PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["INTERNVL_GPUS_PER_WORKER"] == "2"
    assert env["INTERNVL_GPU_GROUP"] == "2,3" and env["INTERNVL_GPU_INDEX"] == "2"
    # Through the parent's own CUDA_VISIBLE_DEVICES: host GPUs 6 and 7 are its 2 and 3.
    inherited = child_env([2, 3], {"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    assert inherited["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert child_env([0], {})["INTERNVL_GPUS_PER_WORKER"] == "1"


@pytest.mark.parametrize(
    ("spec", "per_worker", "sentence"),
    [
        ("all", 4, "--gpus-per-worker 4 needs at least 4 GPUs, but --gpus gives 3 (0,1,2)"),
        ("0,1,2", 2, "--gpus gives 3 GPUs (0,1,2), which do not split into groups of 2"),
        ("0,1,2,3,4,5", 4, "list a multiple of 4 GPUs or change --gpus-per-worker"),
        ("0,1,1,2", 2, "--gpus 0,1,1,2 lists GPU 1 more than once"),
        ("0,1", 0, "--gpus-per-worker must be 1 or more"),
    ],
)
def test_impossible_groupings_are_refused_with_one_sentence(
    monkeypatch: pytest.MonkeyPatch, spec: str, per_worker: int, sentence: str
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(ValueError, match=re.escape(sentence)):
        group_gpus(parse_gpus(spec, count=lambda: 3), per_worker)


@pytest.mark.parametrize(
    ("arguments", "sentence"),
    [
        (["--gpus", "0,1,2", "--gpus-per-worker", "4"], "needs at least 4 GPUs"),
        (["--gpus", "0,1,2", "--gpus-per-worker", "2"], "do not split into groups of 2"),
        (["--gpus", "0,0"], "lists GPU 0 more than once"),
        (["--gpus-per-worker", "2"], "--gpus-per-worker needs --gpus"),
        # Without the flag, INTERNVL_GPUS_PER_WORKER (compose's .env) groups them.
        (["--gpus", "0,1,2", "INTERNVL_GPUS_PER_WORKER=2"], "do not split into groups of 2"),
        (["--gpus", "0,1", "INTERNVL_GPUS_PER_WORKER=0"], "INTERNVL_GPUS_PER_WORKER must be"),
    ],
)
def test_the_worker_command_refuses_an_impossible_grouping(
    arguments: list[str], sentence: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(a.split("=", 1) for a in arguments if "=" in a)
    arguments = [a for a in arguments if "=" not in a]
    done = subprocess.run(
        [sys.executable, "-m", "internvl_queue", "worker", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("internvl-queue worker: "), done.stderr
    assert sentence in lines[0]


def _gpu_workers(registry: WorkerRegistry, parent: int) -> dict[int, WorkerInfo]:
    return {
        info.gpu_index: info
        for info in registry.ready()
        if info.gpu_index is not None and info.pid != parent
    }


def _wait(check: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}\n{log.read_text()[-6000:]}"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("arguments", "groups"),
    [
        # Three workers, one per GPU.
        (["--gpus", "0,1,2"], [[0], [1], [2]]),
        # Two workers spanning two GPUs each (here on the CPU: the model is loaded whole, with a
        # warning, but the grouping, the environment and the heartbeats are as on a GPU host).
        (["--gpus", "0,1,2,3", "--gpus-per-worker", "2"], [[0, 1], [2, 3]]),
    ],
    ids=["three-workers", "two-workers-of-two-gpus"],
)
def test_gpu_workers_share_a_burst_and_stop_together(
    arguments: list[str],
    groups: list[list[int]],
    settings: Settings,
    tiny_model_dir: Path,
    redis_client: redis.Redis,
    make_app: Callable[..., Flask],
    tmp_path: Path,
) -> None:
    # A queue of their own, so that the session's shared worker takes none of these jobs; few
    # threads each, so that neither child can take the whole burst at once.
    mine = replace(settings, queue_name="internvl-gpus-test", worker_concurrency=4)
    env = {
        **worker_env(mine),
        "INTERNVL_QUEUE": mine.queue_name,
        "INTERNVL_WORKER_CONCURRENCY": "4",
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)
    log = tmp_path / "gpus.log"
    with log.open("wb") as out:
        parent = subprocess.Popen(
            [sys.executable, "-m", "internvl_queue", "worker", *arguments],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    registry = WorkerRegistry(redis_client)
    firsts = [group[0] for group in groups]
    try:
        _wait(
            lambda: len(_gpu_workers(registry, parent.pid)) == len(groups),
            120,
            f"{len(groups)} workers",
            log,
        )
        workers = _gpu_workers(registry, parent.pid)
        assert sorted(workers) == firsts
        assert len({w.pid for w in workers.values()}) == len(groups)
        assert [workers[g].gpus for g in firsts] == groups  # each reports its own GPUs

        client = make_app(mine).test_client()
        ready = client.get("/readyz").json
        listed = sorted(w["gpus"] for w in ready["workers"] if w["gpus"] is not None)
        assert listed == groups
        ids = [
            client.post("/v1/jobs", json=json_body(f"question {i}", max_new_tokens=4)).json["id"]
            for i in range(40)
        ]
        store = JobStore(redis_client, retention_s=3600)
        finished = [store.wait_finished(job_id, 60) for job_id in ids]
        assert all(j is not None and j.status is JobStatus.SUCCEEDED for j in finished), finished
        assert all(j is not None and j.attempts == 1 for j in finished)  # each ran exactly once

        moment = time.time()
        _wait(
            lambda: all(w.last_seen > moment for w in _gpu_workers(registry, parent.pid).values()),
            10,
            "fresh heartbeats",
            log,
        )
        served = {g: w.jobs_succeeded for g, w in _gpu_workers(registry, parent.pid).items()}
        assert sum(served.values()) == 40, served  # each job ran once, on one worker
        assert all(count > 0 for count in served.values()), served  # every worker took a share

        # A worker that dies is started again by the parent; the others keep serving.
        last = firsts[-1]
        os.kill(workers[last].pid, signal.SIGKILL)
        _wait(
            lambda: (
                (w := _gpu_workers(registry, parent.pid).get(last)) is not None
                and w.pid != workers[last].pid
            ),
            120,
            f"GPU {last}'s worker restarted",
            log,
        )
        now_running = _gpu_workers(registry, parent.pid)
        assert all(now_running[g].pid == workers[g].pid for g in firsts[:-1])
        assert now_running[last].gpus == groups[-1]
        workers[-1] = now_running[last]  # the restarted one: it must stop too
    finally:
        parent.send_signal(signal.SIGTERM)
        code = parent.wait(90)
    output = log.read_text()
    assert code == 0, output
    assert "stopping the workers" in output and "stopped" in output
    if len(groups[0]) > 1:
        assert "CUDA_VISIBLE_DEVICES=2,3" in output
        assert "INTERNVL_GPUS_PER_WORKER=2 has no effect on the cpu" in output
    children = [w.pid for w in workers.values()]
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
