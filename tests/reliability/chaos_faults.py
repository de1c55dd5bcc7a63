"""The faults of the chaos run, one method per kind, each made while work is in flight.

Each fault is recorded with what was in flight when it struck (and the test fails if nothing
was) and how long the service took to recover from it, for the run's summary table.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import requests

from tests.conftest import WorkerProcess
from tests.receiver import Receiver
from tests.reliability.chaos_client import ChaosClient
from tests.reliability.chaos_processes import ApiGroup
from tests.reliability.harness import TERMINAL, Stack, WebhookWorker, wait_for

__all__ = ["API_KILL_STEPS", "Fault", "Faults"]

# The steps of a submit at which the test fault hook (INTERNVL_TEST_FAULTS=1, request header
# ``X-Test-Fault: kill-api-at=<step>``) makes the API process SIGKILL itself.
API_KILL_STEPS = ("before-store", "after-store", "after-dispatch", "before-reply")
RECENT = 200


@dataclass(frozen=True)
class Fault:
    kind: str
    in_flight: str  # what was in flight when it struck, in words
    recovery_s: float  # see each fault's docstring for what "recovered" means
    detail: str = ""


class Faults:
    def __init__(
        self,
        stack: Stack,
        api: ApiGroup,
        webhooks: WebhookWorker,
        client: ChaosClient,
        receiver: Receiver,
        rng: random.Random,
    ) -> None:
        self.stack, self.api, self.webhooks = stack, api, webhooks
        self.client, self.receiver, self.rng = client, receiver, rng
        self.done: list[Fault] = []
        self._hooked: list[threading.Thread] = []

    # -- in flight ----------------------------------------------------------------------------
    def _recent(self) -> list[str]:
        """The last jobs accepted: where work in flight is (reading all would load Redis)."""
        return self.client.accepted()[-RECENT:]

    def _unfinished(self) -> list[str]:
        return self.stack.unfinished(self._recent())

    def _volley(self, count: int = 6, max_new_tokens: str = "24") -> None:
        """A few longer jobs at once, so that a fault finds work running (not waited for: the
        faults that need some wait for it to be in flight, see ``_in_flight``)."""
        for _ in range(count):
            threading.Thread(
                target=self.client.submit, kwargs={"max_new_tokens": max_new_tokens}, daemon=True
            ).start()

    def _in_flight(self, count: int = 4, max_new_tokens: str = "24") -> list[str]:
        """Accepted jobs not yet ended, after a volley: the fault may strike now."""
        self._volley(count, max_new_tokens)
        found: list[str] = []

        def some() -> bool:
            found[:] = self._unfinished()
            return bool(found)

        wait_for(some, 30, "accepted jobs in flight")
        return found

    def _running_by_worker(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for job_id, job in self.stack.jobs(self._recent()).items():
            if job["status"] == "running":
                found.setdefault(job["worker"], []).append(job_id)
        return found

    def _busiest_worker(self) -> tuple[WorkerProcess, str]:
        """The ready worker running the most jobs (aimed: the fault costs the most there)."""
        self._volley(6, "48")
        best: list[tuple[WorkerProcess, str, int]] = []

        def some_running() -> bool:
            running = self._running_by_worker()
            best.clear()
            for worker in self.stack.workers:
                if worker.process.poll() is None:
                    try:
                        name = worker.info().name
                    except LookupError:
                        continue  # starting again after an earlier fault
                    best.append((worker, name, len(running.get(name, []))))
            best.sort(key=lambda found: found[2], reverse=True)
            return bool(best and best[0][2])

        wait_for(some_running, 30, "a worker running jobs")
        return best[0][0], best[0][1]

    def _strike(
        self, blow: Callable[[WorkerProcess], None], undo: Callable[[WorkerProcess], None]
    ) -> tuple[WorkerProcess, list[str], float]:
        """``blow`` to the busiest worker: (it, the jobs it was running then, when).

        The jobs are read after the blow (a killed or stopped worker changes none of them), so
        the fault is known to have met work. If they all ended in the instant between the choice
        and the blow, ``undo`` puts the worker back and the next busiest one is struck.
        """
        for _ in range(3):
            victim, name = self._busiest_worker()
            blow(victim)
            struck_at = time.monotonic()
            running = [
                i
                for i, job in self.stack.jobs(self._recent()).items()
                if job["status"] == "running" and job["worker"] == name
            ]
            if running:
                return victim, running, struck_at
            undo(victim)
        raise AssertionError("three times, a worker's jobs all ended just as it was struck")

    def _all_terminal(self, ids: list[str]) -> bool:
        return all(j["status"] in TERMINAL for j in self.stack.jobs(ids).values())

    def _record(self, fault: Fault) -> None:
        self.done.append(fault)
        print(
            f"  {time.strftime('%H:%M:%S')} {fault.kind}: in flight {fault.in_flight}; "
            f"recovered in {fault.recovery_s:.1f} s {fault.detail}",
            flush=True,
        )

    # -- GPU workers ----------------------------------------------------------------------------
    def worker_sigkill(self) -> None:
        """Recovered: every job it was running is terminal (run again elsewhere after its lease);
        the worker is started again at once, as a supervisor would."""

        def start_again(victim: WorkerProcess) -> None:
            victim.restart().wait_ready(60)

        victim, running, killed_at = self._strike(WorkerProcess.kill, start_again)
        victim.restart()
        wait_for(lambda: self._all_terminal(running), 60, "the killed worker's jobs")
        took = time.monotonic() - killed_at
        self._record(Fault("worker SIGKILL", f"{len(running)} jobs running on it", took))
        victim.wait_ready(60)

    def worker_sigterm(self) -> None:
        """Recovered: the worker finished the jobs in hand and exited 0 (a warm shutdown)."""

        def freeze(victim: WorkerProcess) -> None:
            os.kill(victim.process.pid, signal.SIGSTOP)

        def thaw(victim: WorkerProcess) -> None:
            os.kill(victim.process.pid, signal.SIGCONT)

        # A warm shutdown goes on finishing its jobs after SIGTERM, so reading them after the
        # signal races with their end (a tiny model's batch takes milliseconds). Frozen, the
        # worker changes none; SIGTERM is then sent and delivered as it is continued.
        victim, running, started = self._strike(freeze, thaw)
        victim.process.terminate()
        thaw(victim)
        code = victim.process.wait(60)  # not terminate(): a second SIGTERM stops it at once
        took = time.monotonic() - started
        assert code == 0, f"SIGTERM: the worker exited with {code}\n{victim.log()}"
        jobs = self.stack.jobs(running)
        assert all(jobs[i]["status"] in TERMINAL for i in running), "jobs left in hand"
        self._record(Fault("worker SIGTERM", f"{len(running)} jobs running on it", took))
        victim.restart()
        victim.wait_ready(60)

    def worker_sigstop(self) -> None:
        """Stopped past its lease, then continued. Recovered: every job it was running is
        terminal (taken over by the others; its own late results must not count twice)."""

        def cont(victim: WorkerProcess) -> None:
            os.kill(victim.process.pid, signal.SIGCONT)

        def stop(victim: WorkerProcess) -> None:
            os.kill(victim.process.pid, signal.SIGSTOP)

        stopped_for = self.rng.uniform(4.0, 8.0)
        victim, running, stopped_at = self._strike(stop, cont)
        continued = False
        try:
            deadline = stopped_at + 60
            while not (continued and self._all_terminal(running)):
                assert time.monotonic() < deadline, "the stopped worker's jobs did not finish"
                if not continued and time.monotonic() - stopped_at >= stopped_for:
                    cont(victim)
                    continued = True
                time.sleep(0.1)
        finally:
            if not continued:
                cont(victim)
        took = time.monotonic() - stopped_at
        detail = f"(stopped {stopped_for:.1f} s)"
        self._record(Fault("worker SIGSTOP+SIGCONT", f"{len(running)} jobs running", took, detail))
        assert victim.process.poll() is None, f"the continued worker exited\n{victim.log()}"

    # -- the webhook worker -------------------------------------------------------------------
    def webhook_worker_sigkill(self) -> None:
        """Recovered: a webhook reaches the receiver again after the worker was killed."""
        unfinished = len(self._in_flight(4, "8"))
        pending = self.stack.client.zcard("iq:outbox")
        self.webhooks.kill()
        killed_at = time.monotonic()
        seen = len(self.receiver.received)
        time.sleep(self.rng.uniform(0.5, 3.0))
        self.webhooks.restart()
        wait_for(lambda: len(self.receiver.received) > seen, 60, "webhooks again")
        self.webhooks.wait_ready()
        in_flight = f"{pending} events in the outbox, {unfinished} jobs unfinished"
        self._record(Fault("webhook worker SIGKILL", in_flight, time.monotonic() - killed_at))

    # -- Redis ---------------------------------------------------------------------------------
    def redis_kill(self) -> None:
        """kill -9, down for 1-5 s, restarted (AOF). Recovered (from the kill): the API reads a
        job again."""
        unfinished = self._in_flight()
        outage = self.rng.uniform(1.0, 5.0)
        self.stack.redis.kill()
        killed_at = time.monotonic()
        time.sleep(outage)
        self.stack.redis.restart()
        job_url = f"{self.api.url}/v1/jobs/{unfinished[0]}"

        def answered() -> bool:
            try:
                return requests.get(job_url, timeout=10).status_code == 200
            except requests.RequestException:
                return False

        after_restart = wait_for(answered, 60, "the API to read a job after Redis restarted")
        took = time.monotonic() - killed_at
        detail = f"(down {outage:.1f} s; API answers {after_restart:.1f} s after the restart)"
        self._record(Fault("Redis kill -9", f"{len(unfinished)} jobs unfinished", took, detail))

    # -- the API ----------------------------------------------------------------------------------
    def api_kill_at(self, step: str) -> None:
        """The API process SIGKILLs itself at ``step`` of a submit (test fault hook); the client
        retries with the same key. Recovered: that logical submit was accepted (the retry ends
        in a background thread; its time is read at the end, see ``hooked_recoveries``)."""
        unfinished = len(self._in_flight())
        key = uuid.uuid4().hex
        thread = threading.Thread(
            target=self.client.submit,
            kwargs={"first_headers": {"X-Test-Fault": f"kill-api-at={step}"}, "key": key},
            daemon=True,
        )
        thread.start()
        self._hooked.append(thread)
        wait_for(lambda: key in self.client.submits, 10, "the submit to start")
        record = self.client.submits[key]
        wait_for(lambda: record.retried or record.accepted_at is not None, 30, "the first attempt")
        assert record.no_answer >= 1, (
            f"kill-api-at={step}: the API answered instead of dying; is the test fault hook "
            f"(INTERNVL_TEST_FAULTS=1, X-Test-Fault) in place? {record}"
        )
        wait_for(self.api.healthy, 60, "the API's worker to be respawned")
        assert self.api.process.poll() is None, "the API master died with its worker"
        self.done.append(
            Fault(f"API kill at {step}", f"that submit, {unfinished} jobs unfinished", -1, key)
        )
        print(f"  {time.strftime('%H:%M:%S')} API kill at {step}: {unfinished} unfinished")

    def hooked_recoveries(self) -> list[Fault]:
        """The API-hook faults with their recovery: from the kill to the submit's acceptance."""
        for thread in self._hooked:
            thread.join(150)
        done = []
        for fault in self.done:
            if fault.kind.startswith("API kill at"):
                record = self.client.submits[fault.detail]
                assert record.first_failure is not None
                took = (record.accepted_at or float("nan")) - record.first_failure
                detail = f"(retried {record.no_answer + record.unavailable + record.in_flight} "
                detail += f"times, {record.in_flight} x 409; replayed: {bool(record.replayed)})"
                fault = Fault(fault.kind, fault.in_flight, took, detail)
            done.append(fault)
        return done

    def api_master_sigkill(self) -> None:
        """The whole API (gunicorn master and workers) SIGKILLed while submits are on the wire,
        then started again. Recovered: ``/healthz`` answers again."""
        unfinished = len(self._in_flight())
        wait_for(lambda: self.client.on_wire > 0, 10, "a submit on the wire")
        on_wire = self.client.on_wire
        self.api.kill()
        killed_at = time.monotonic()
        time.sleep(self.rng.uniform(0.2, 2.0))
        self.api.restart()
        wait_for(self.api.healthy, 60, "the API to start again")
        in_flight = f"{on_wire} submits on the wire, {unfinished} jobs unfinished"
        self._record(Fault("API SIGKILL (all)", in_flight, time.monotonic() - killed_at))
