"""A GPU worker SIGKILLed mid-burst, a poison job, a worker stopped with SIGTERM: real processes.

Leases are compressed to 3 s (heartbeat 0.5 s); every job must end, once, within 60 s of the
fault, whatever the broker's visibility timeout (left at its default hour).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from internvl_queue.worker.runtime import TEST_KILL_MARKER
from tests.conftest import WorkerProcess
from tests.reliability.harness import Burst, Stack, running_stack, wait_for

JOBS = 48


def _name(worker: WorkerProcess) -> str:
    return worker.info().name


def _running_on(stack: Stack, ids: list[str], worker: str) -> list[str]:
    return [
        i
        for i, job in stack.jobs(ids).items()
        if job["status"] == "running" and job["worker"] == worker
    ]


def _kill_mid_burst(stack: Stack, victim: WorkerProcess) -> tuple[list[str], list[str], float]:
    """Submit a burst, SIGKILL ``victim`` while it runs some of it; (ids, its running ids, when)."""
    name = _name(victim)
    burst = Burst(stack.api, max_new_tokens="48")
    ids = burst.volley(JOBS)
    wait_for(lambda: len(_running_on(stack, ids, name)) >= 3, 30, "jobs running on the victim")
    victim.kill()
    killed_at = time.monotonic()
    running = _running_on(stack, ids, name)  # as it died (nothing changes them for a lease)
    queued = [i for i, j in stack.jobs(ids).items() if j["status"] == "queued"]
    print(f"\nkilled with {len(running)} jobs running on it and {len(queued)} queued")
    return ids, running, killed_at


def _check_all_ran_once(stack: Stack, ids: list[str], lost_with_victim: list[str]) -> None:
    jobs = stack.jobs(ids)
    assert len(jobs) == len(ids)
    statuses = {j["status"] for j in jobs.values()}
    assert statuses == {"succeeded"}, {i: j["error"] for i, j in jobs.items() if j["error"]}
    for job_id in lost_with_victim:  # run again, attempt counted, by another worker
        assert int(jobs[job_id]["attempts"]) == 2, jobs[job_id]
    # Each survivor's counter matches the outcomes stored under its name: nothing stored twice.
    moment = time.time()
    for worker in stack.workers:
        if worker.process.poll() is None:
            info = worker.info_after(moment)
            mine = [j for j in jobs.values() if j["worker"] == info.name]
            assert info.jobs_succeeded == len(mine), (info, len(mine))
    assert not stack.client.zcard("iq:leases")


def test_a_killed_workers_jobs_finish_on_the_other_worker(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with running_stack(tmp_path, str(tiny_model_dir)) as stack:
        # The other worker takes a few jobs at a time, so that the victim holds some.
        victim, other = stack.start_worker(), stack.start_worker(INTERNVL_WORKER_CONCURRENCY="4")
        victim.wait_ready()
        other.wait_ready()
        ids, running, killed_at = _kill_mid_burst(stack, victim)
        took = wait_for(lambda: not stack.unfinished(ids), 60, "every job to finish")
        print(f"all {len(ids)} jobs finished {took:.1f} s after the kill (lease 3 s)")
        stack.workers.remove(victim)
        victim.close()
        _check_all_ran_once(stack, ids, running)
        assert time.monotonic() - killed_at < 60


def test_a_killed_workers_jobs_finish_on_its_replacement(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with running_stack(tmp_path, str(tiny_model_dir)) as stack:
        victim = stack.start_worker()
        victim.wait_ready()
        ids, running, killed_at = _kill_mid_burst(stack, victim)
        stack.workers.remove(victim)
        victim.close()
        stack.start_worker().wait_ready()
        wait_for(lambda: not stack.unfinished(ids), 60, "every job to finish")
        took = time.monotonic() - killed_at
        print(f"all {len(ids)} jobs finished {took:.1f} s after the kill (replacement started)")
        assert took < 60
        _check_all_ran_once(stack, ids, running)


def test_a_poison_job_fails_alone_and_the_queue_keeps_flowing(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with running_stack(tmp_path, str(tiny_model_dir)) as stack:
        workers = [stack.start_worker(), stack.start_worker()]
        for worker in workers:
            worker.wait_ready()
        burst = Burst(stack.api, max_new_tokens="16")
        before = burst.volley(10)
        poison = burst.submit(question=f"What is this? {TEST_KILL_MARKER}").json()["id"]
        after = burst.volley(10)
        restarts = 0
        deadline = time.monotonic() + 60
        while stack.unfinished([poison, *before, *after]):
            if time.monotonic() > deadline:
                left = stack.jobs(stack.unfinished([poison, *before, *after]))
                states = [(i == poison, j["status"], j["attempts"]) for i, j in left.items()]
                logs = "\n".join(
                    line
                    for w in workers
                    for line in w.log_path.read_text().splitlines()
                    if any(i[:8] in line for i in left) or "reaper" in line
                )
                c = stack.client
                raise AssertionError(
                    f"unfinished after 60 s ({restarts} restarts): {states} {list(left)}\n"
                    f"unacked {c.hgetall('unacked')} queue {c.llen('internvl')} "
                    f"dispatching {c.zrange('iq:dispatching', 0, -1, withscores=True)}\n{logs}"
                )
            for worker in workers:  # a supervisor: a dead worker is started again
                if worker.process.poll() is not None:
                    worker.restart()
                    restarts += 1
            time.sleep(0.1)
        jobs = stack.jobs([poison, *before, *after])
        assert jobs[poison]["status"] == "failed"
        assert '"too_many_attempts"' in jobs[poison]["error"]
        assert int(jobs[poison]["attempts"]) == 3
        others = [jobs[i] for i in before + after]
        assert [j["status"] for j in others] == ["succeeded"] * 20, [j["error"] for j in others]
        print(f"\npoison job failed after {restarts} worker deaths; 20 neighbours succeeded")
        assert restarts == 3


def test_sigterm_finishes_the_jobs_in_hand_and_returns_the_rest_at_once(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with running_stack(tmp_path, str(tiny_model_dir), lease_s=30.0) as stack:
        # Four jobs at a time: the rest of the burst waits in the broker (or reserved by it).
        stopping = stack.start_worker(INTERNVL_WORKER_CONCURRENCY="4")
        stopping.wait_ready()
        name = _name(stopping)
        ids = Burst(stack.api, max_new_tokens="32").volley(30)
        wait_for(lambda: len(_running_on(stack, ids, name)) >= 2, 30, "jobs running")
        in_hand = _running_on(stack, ids, name)
        stopped_at = time.monotonic()
        assert stopping.terminate(60) == 0, stopping.log()
        stop_took = time.monotonic() - stopped_at
        jobs = stack.jobs(ids)
        # What it had started is stored; nothing is left running or leased.
        assert all(jobs[i]["status"] == "succeeded" for i in in_hand)
        assert not [j for j in jobs.values() if j["status"] == "running"]
        # The rest is back in the broker at once: a new worker finishes everything, long before
        # the lease (30 s) or the visibility timeout (1 h) could matter.
        replacement = stack.start_worker()
        replacement.wait_ready()
        took = wait_for(lambda: not stack.unfinished(ids), 25, "the rest on the new worker")
        print(
            f"\nSIGTERM: {len(in_hand)} in hand stored, stop took {stop_took:.1f} s; rest "
            f"done {took:.1f} s after the new worker was ready"
        )


def test_a_second_sigterm_stops_at_once_and_hands_the_jobs_back(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with running_stack(tmp_path, str(tiny_model_dir), lease_s=60.0) as stack:
        # The other worker takes a few jobs at a time, so that the stopping one holds some.
        stopping, other = stack.start_worker(), stack.start_worker(INTERNVL_WORKER_CONCURRENCY="4")
        stopping.wait_ready()
        other.wait_ready()
        name = _name(stopping)
        ids = Burst(stack.api, max_new_tokens="48").volley(JOBS)
        wait_for(lambda: len(_running_on(stack, ids, name)) >= 3, 30, "jobs running")
        os.kill(stopping.process.pid, signal.SIGTERM)
        time.sleep(0.2)
        os.kill(stopping.process.pid, signal.SIGTERM)
        stopping.process.wait(10)  # at once, not after its jobs
        handed_at = time.monotonic()
        # Its leases (60 s) were ended and the messages it had not started handed back on the
        # way out: the other worker takes all of them now.
        try:
            took = wait_for(lambda: not stack.unfinished(ids), 50, "every job to finish")
        except AssertionError:
            left = {i: j["status"] for i, j in stack.jobs(ids).items()}
            print(f"not finished: {left}\nthe stopped worker's log:\n{stopping.log()[-6000:]}")
            raise
        print(f"\nsecond SIGTERM: stopped at once; all jobs done {took:.1f} s later")
        assert time.monotonic() - handed_at < 60  # sooner than the lease
        jobs = stack.jobs(ids)
        assert {j["status"] for j in jobs.values()} == {"succeeded"}
