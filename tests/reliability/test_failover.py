"""The primary Redis SIGKILLed under load and Sentinel promoting its replica (issue 23).

A primary, a replica and three sentinels (tests/sentinel_cluster.py); a real API with the
durability wait (``INTERNVL_REDIS_MIN_REPLICAS=1``), two real GPU workers on the tiny model and
the webhook worker, all configured only with the sentinels; a webhook receiver on loopback.
Several client threads submit a burst of jobs with webhooks, each under its own Idempotency-Key,
retrying a 503 after its Retry-After (and a connection error) with the same key. The primary is
SIGKILLed at one of three moments (while the burst is submitted, while the workers run it, while
its webhooks are delivered); once the replica is promoted the old primary is restarted (with its
append-only file) as the new primary's replica, so that submits can be made durable again.

Then: every job that got a 202 succeeded, exactly once; none was lost; one job per key; one
terminal webhook per job reached the receiver (deduplicated on webhook-id); no process exited;
submits got only 202 or 503 with Retry-After.

A fourth case restarts the old primary the way a crashed host comes back: as the primary its own
configuration says it is, with its data (jobs still queued or running there, their broker
messages, leased webhook events), until the sentinels make it the new primary's replica. Nothing
it held comes back: a job finished on the new primary stays as it was, and runs no second time.

The cases share one cluster and one set of processes (each case's jobs are told apart by their
keys): starting them is most of the cost.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import redis
import requests

from internvl_queue.cli.redis_server import RedisServer, start_redis
from internvl_queue.core.keys import job_key, outbox_key
from internvl_queue.core.redis_client import connect
from internvl_queue.core.workers import WorkerRegistry
from tests.api.api_process import ApiProcess
from tests.conftest import WorkerProcess
from tests.images import photo
from tests.processes import CommandProcess
from tests.receiver import Receiver
from tests.reliability.harness import TERMINAL, WebhookWorker, fault_settings, stack_env, wait_for
from tests.sentinel_cluster import MASTER_NAME, SentinelCluster, sentinel_cluster

BURST = 300
THREADS = 6
TERMINAL_EVENTS = ("job.succeeded", "job.failed", "job.canceled")
_RECORD = re.compile(rb"^iq:job:([^:]+)$")  # the job hashes, not their images or events


@dataclass
class Service:
    cluster: SentinelCluster
    api: ApiProcess
    hooks: Receiver
    client: redis.Redis  # through the sentinels, as the processes reach Redis
    processes: dict[str, CommandProcess]
    logs: Path

    def assert_all_running(self) -> None:
        for name, process in self.processes.items():
            assert process.process.poll() is None, f"the {name} exited\n{process.log()[-3000:]}"

    def statuses(self, ids: list[str]) -> dict[str, str] | None:
        """job id -> its stored status (a missing record is left out); None while Redis is
        unreachable (a failover under way)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(job_key(job_id), "status")
            answers = pipe.execute()
        except redis.RedisError:
            return None
        return {i: s.decode() for i, s in zip(ids, answers, strict=True) if s is not None}

    def job_records(self) -> set[str]:
        found = (_RECORD.match(key) for key in self.client.scan_iter("iq:job:*", count=1000))
        return {match.group(1).decode() for match in found if match}

    def redis_state(self) -> str:
        """What a failure message needs: the queues' and the outbox's lengths, due times."""
        try:
            now = time.time()
            due = self.client.zrange(outbox_key(), 0, 4, withscores=True)
            return (
                f"outbox: {self.client.zcard(outbox_key())} events, first due in "
                f"{[round(score - now, 1) for _, score in due]} s; queue lengths: "
                + ", ".join(
                    f"{key.decode()}={self.client.llen(key)}"
                    for key in self.client.scan_iter(count=1000, _type="list")
                    if not key.startswith(b"iq:job:")  # each job's list of deliveries
                )
            )
        except redis.RedisError as exc:
            return f"Redis: {exc}"

    def terminal_events(self) -> dict[str, set[str]]:
        """job id -> the distinct webhook-ids of the terminal events the receiver got for it."""
        found: dict[str, set[str]] = {}
        for received in list(self.hooks.received):
            event = json.loads(received.body)
            if event["type"] in TERMINAL_EVENTS:
                found.setdefault(event["data"]["id"], set()).add(received.headers["webhook-id"])
        return found


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("failover")
    hooks = Receiver().start()
    with sentinel_cluster(root / "redis", persistent=True) as cluster:
        settings = replace(
            fault_settings(cluster.env()["REDIS_URL"], str(tiny_model_dir)),
            redis_sentinels=cluster.sentinels_setting,
            redis_master_name=MASTER_NAME,
        )
        env = {
            **stack_env(settings),
            **cluster.env(),
            "INTERNVL_REDIS_MIN_REPLICAS": "1",
            "INTERNVL_REDIS_REPLICA_TIMEOUT_MS": "500",
            # Few deliveries at once: a slow receiver then keeps them in flight for a while.
            "WEBHOOK_CONCURRENCY": "4",
        }
        client = connect(cluster.target(), max_connections=8, socket_timeout_s=5)
        api = ApiProcess(settings.redis_url, root / "api.log", **env)
        workers = [WorkerProcess(settings, root / f"worker-{n}.log", **env) for n in range(2)]
        webhooks = WebhookWorker(env, root / "webhooks.log")
        processes: dict[str, CommandProcess] = {
            "API": api,
            "worker 0": workers[0],
            "worker 1": workers[1],
            "webhook worker": webhooks,
        }
        try:
            api.wait_ready()
            for worker in workers:
                worker.registry.redis.close()
                worker.registry = WorkerRegistry(client)  # not REDIS_URL's (unused) host
                worker.wait_ready()
            webhooks.wait_ready()
            yield Service(cluster, api, hooks, client, processes, root)
        finally:
            for process in processes.values():
                if process.process.poll() is None:
                    process.kill()
                process.close()
            client.connection_pool.disconnect()
            hooks.stop()


@dataclass
class Submitter:
    """``THREADS`` client threads submitting one job per Idempotency-Key until each got a 202."""

    api: str
    webhook_url: str
    prefix: str
    max_new_tokens: int = 8
    accepted: dict[str, str] = field(default_factory=dict)  # key -> job id
    accepted_at: list[float] = field(default_factory=list)  # monotonic, each 202
    unavailable: int = 0  # 503 with Retry-After
    no_answer: int = 0  # connection errors and timeouts
    unexpected: list[str] = field(default_factory=list)  # anything else: a failure
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def key(self, n: int) -> str:
        return f"{self.prefix}-{n}"

    def submit_until_accepted(self, session: requests.Session, n: int, timeout: float = 90) -> None:
        key = self.key(n)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = session.post(
                    f"{self.api}/v1/jobs",
                    data={
                        "question": "What is in the picture?",
                        "webhook_url": self.webhook_url,
                        "max_new_tokens": str(self.max_new_tokens),
                    },
                    files=[("image", ("a.jpg", photo(64, 48, seed=n % 50), "image/jpeg"))],
                    headers={"Idempotency-Key": key},
                    timeout=30,
                )
            except requests.RequestException:
                with self._lock:
                    self.no_answer += 1
                time.sleep(0.2)
                continue
            if reply.status_code == 202:
                with self._lock:
                    self.accepted[key] = reply.json()["id"]
                    self.accepted_at.append(time.monotonic())
                return
            retry_after = reply.headers.get("Retry-After")
            if reply.status_code == 503 and retry_after:
                with self._lock:
                    self.unavailable += 1
                time.sleep(float(retry_after))
                continue
            with self._lock:
                self.unexpected.append(f"{key}: {reply.status_code} {reply.text[:300]}")
            return
        with self._lock:
            self.unexpected.append(f"{key}: no 202 within {timeout} s")

    def run(self, numbers: range) -> None:
        """Submit the jobs numbered ``numbers``, shared among the threads; returns when done."""
        counter = iter(numbers)
        lock = threading.Lock()

        def take() -> int | None:
            with lock:
                return next(counter, None)

        def work() -> None:
            with requests.Session() as session:
                while (n := take()) is not None:
                    self.submit_until_accepted(session, n)

        threads = [threading.Thread(target=work, daemon=True) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)

    def start(self, numbers: range) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(numbers,), daemon=True)
        thread.start()
        return thread


@dataclass
class Failover:
    killed_at: float
    new_primary: int
    promoted_s: float


def _kill_primary(cluster: SentinelCluster) -> Failover:
    """SIGKILL the primary, wait for the sentinels to promote the replica, then start the old
    one again (with its AOF) as the new primary's replica, so that the durability wait can be
    met. The replica discards its data at its first sync."""
    before = cluster.primary_port()
    old = cluster.server_on(before)
    killed_at = time.monotonic()
    old.kill()
    new = cluster.wait_for_new_primary(before, 30)
    promoted_s = time.monotonic() - killed_at
    # Started straight as the new primary's replica, as a host that rejoins with the sentinels'
    # configuration does (not as an empty primary until the sentinels convert it: see the report).
    old.process = start_redis(
        old.data_dir, persistent=old.persistent, port=old.port, replica_of=new
    ).process
    return Failover(killed_at, new, promoted_s)


_cases = itertools.count()


@pytest.mark.parametrize(
    "moment",
    ["during submits", "during a batch", "during webhook delivery"],
)
def test_no_accepted_job_is_lost_when_the_primary_dies(service: Service, moment: str) -> None:
    case = next(_cases)
    service.assert_all_running()
    records_before = service.job_records()
    # Jobs of the batch case generate longer, so that the workers are still busy when the
    # submits end; the receiver of the webhook case is slow, so that deliveries are in flight.
    submitter = Submitter(
        service.api.url,
        service.hooks.url,
        prefix=f"failover-{case}",
        max_new_tokens=48 if moment == "during a batch" else 8,
    )
    numbers = range(BURST)

    def accepted_ids() -> list[str]:
        with submitter._lock:
            return list(submitter.accepted.values())

    if moment == "during submits":
        burst = submitter.start(numbers)
        wait_for(lambda: len(submitter.accepted) >= BURST // 3, 120, "a third of the burst")
        in_flight = BURST - len(submitter.accepted)
        failover = _kill_primary(service.cluster)
        burst.join(150)
        assert in_flight > 0 and burst.is_alive() is False
        what = f"{in_flight} of {BURST} jobs not yet accepted at the kill"
    elif moment == "during a batch":
        submitter.run(numbers)
        ids = accepted_ids()

        def running() -> dict[str, str]:
            return service.statuses(ids) or {}

        now = running()
        in_flight = sum(status not in TERMINAL for status in now.values())
        busy = sum(status == "running" for status in now.values())
        failover = _kill_primary(service.cluster)
        assert busy > 0, f"no job running when the submits ended: {now}"
        what = f"{in_flight} jobs unfinished, {busy} running at the kill"
    else:
        service.hooks.delay_s = 1.0  # under WEBHOOK_TIMEOUT_S (2 s): slow, not failing
        try:
            submitter.run(numbers)
            ids = accepted_ids()

            def all_succeeded() -> bool:
                found = service.statuses(ids)
                return found is not None and all(found.get(i) == "succeeded" for i in ids)

            wait_for(all_succeeded, 120, "every job of the burst to succeed")
            delivered = len(set(ids) & set(service.terminal_events()))
            failover = _kill_primary(service.cluster)
        finally:
            service.hooks.delay_s = 0.0
        assert delivered < len(ids), "every webhook was delivered before the kill"
        in_flight = len(ids) - delivered
        what = f"{in_flight} of {len(ids)} terminal webhooks not yet delivered at the kill"

    # A job submitted after the kill: when it is accepted, the service has recovered.
    submitter.submit_until_accepted(requests.Session(), BURST, timeout=90)
    recovered_s = max(submitter.accepted_at) - failover.killed_at
    assert not submitter.unexpected, submitter.unexpected[:5]
    assert len(submitter.accepted) == BURST + 1
    ids = accepted_ids()

    def finished() -> bool:
        found = service.statuses(ids)
        return found is not None and all(found.get(i) in TERMINAL for i in ids)

    try:
        wait_for(finished, 120, "every accepted job to finish")
        wait_for(lambda: set(ids) <= set(service.terminal_events()), 60, "every terminal webhook")
    except AssertionError as exc:
        worker_logs = "\n".join(p.log()[-1500:] for n, p in service.processes.items() if n != "API")
        raise AssertionError(f"{exc}\n{service.redis_state()}\n{worker_logs}") from None
    statuses = service.statuses(ids)
    assert statuses is not None
    lost = [i for i in ids if i not in statuses]
    succeeded = [i for i in ids if statuses.get(i) == "succeeded"]
    # One job per Idempotency-Key: the keys name distinct jobs, and no other job was stored.
    new_records = service.job_records() - records_before
    duplicated = len(new_records) - len(set(ids))
    events = service.terminal_events()
    twice = {i: hooks for i, hooks in events.items() if i in set(ids) and len(hooks) > 1}
    print(
        f"\nprimary SIGKILLed {moment} ({what}): {len(ids)} accepted, {len(succeeded)} "
        f"succeeded, {len(lost)} lost, {duplicated} duplicated, {submitter.unavailable} 503s "
        f"(+Retry-After), {submitter.no_answer} connection errors, replica promoted after "
        f"{failover.promoted_s:.1f} s, submits accepted again {recovered_s:.1f} s after the kill; "
        f"{len(set(ids) & set(events))} jobs with a terminal webhook"
    )
    assert not lost, f"{len(lost)} accepted jobs lost: {lost[:5]}"
    assert len(set(ids)) == len(ids), "two keys answered with the same job"
    assert new_records == set(ids), f"{duplicated} jobs stored beyond one per key"
    assert len(succeeded) == len(ids), {i: statuses[i] for i in ids if i not in succeeded}
    assert not twice, f"two terminal events for a job: {list(twice.items())[:3]}"
    service.assert_all_running()


def _held_by(server: RedisServer, ids: list[str], where: Path) -> dict[str, str]:
    """job id -> its status in the data ``server`` (stopped) left on disk: read from a copy of
    its directory, served by a Redis on another port that nothing else knows of."""
    copy = where / f"copy-of-{server.port}"
    shutil.copytree(server.data_dir, copy, ignore=shutil.ignore_patterns("*.log"))
    reader = start_redis(copy, persistent=True)
    try:
        with redis.Redis(port=reader.port, socket_timeout=5) as held:
            pipe = held.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(job_key(job_id), "status")
            answers = pipe.execute()
    finally:
        reader.stop()
    return {i: s.decode() for i, s in zip(ids, answers, strict=True) if s is not None}


def _replication(port: int) -> dict[str, object]:
    try:
        with redis.Redis(port=port, socket_timeout=1) as node:
            return dict(node.info("replication"))
    except redis.RedisError:
        return {}


def test_the_old_primary_comes_back_with_its_data_and_no_job_runs_twice(service: Service) -> None:
    case = next(_cases)
    service.assert_all_running()
    records_before = service.job_records()
    submitter = Submitter(
        service.api.url, service.hooks.url, prefix=f"rejoin-{case}", max_new_tokens=48
    )
    submitter.run(range(BURST // 2))
    ids = list(submitter.accepted.values())
    assert not submitter.unexpected, submitter.unexpected[:5]
    cluster = service.cluster
    before = cluster.primary_port()
    old = cluster.server_on(before)
    old.kill()
    new = cluster.wait_for_new_primary(before, 30)
    killed_at = time.monotonic()
    # What the old primary holds: the jobs its copy has as not yet finished.
    held = _held_by(old, ids, service.logs)
    unfinished_there = {i for i, status in held.items() if status not in TERMINAL}
    assert unfinished_there, f"the old primary held no unfinished job: {held}"

    # The new primary has no replica now: the workers go on, the submits wait. Let it finish
    # every job the old one holds as unfinished, and remember how each ended.
    def finished_here() -> dict[str, tuple[bytes | None, ...]] | None:
        try:
            pipe = service.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(job_key(job_id), "status", "finished_at", "attempts", "attempt_token")
            rows = pipe.execute()
        except redis.RedisError:
            return None
        return {i: tuple(row) for i, row in zip(ids, rows, strict=True)}

    def all_finished_here() -> bool:
        rows = finished_here()
        return rows is not None and all(
            (row[0] or b"").decode() in TERMINAL for row in rows.values()
        )

    wait_for(all_finished_here, 120, "every job to finish on the new primary")
    outcomes = finished_here()
    assert outcomes is not None

    # Back as a crashed host comes back: its own configuration says primary, its AOF has the
    # jobs above as queued or running. The sentinels see it and make it the new one's replica.
    old.process = start_redis(old.data_dir, persistent=True, port=old.port).process

    def rejoined() -> bool:
        info = _replication(old.port)
        return (
            info.get("role") == "slave"
            and info.get("master_port") == new
            and info.get("master_link_status") == "up"
        )

    wait_for(rejoined, 60, "the sentinels to make the old primary a replica")
    rejoined_s = time.monotonic() - killed_at
    # A job submitted now is accepted (durable again: the rejoined replica acknowledges it).
    submitter.submit_until_accepted(requests.Session(), BURST // 2, timeout=90)
    ids = list(submitter.accepted.values())
    late = ids[-1]
    wait_for(
        lambda: (service.statuses([late]) or {}).get(late) in TERMINAL, 60, "the late job to end"
    )
    wait_for(lambda: set(ids) <= set(service.terminal_events()), 60, "every terminal webhook")
    # Give anything the old primary might have brought back (a queued copy, a broker message
    # for a finished job, a leased webhook event) time to run: a worker heartbeat and reaper
    # pass, an outbox poll. (A wait for something that should not happen: it cannot be awaited.)
    time.sleep(3)
    after = finished_here()
    assert after is not None
    changed = {i: (outcomes[i], after[i]) for i in outcomes if after[i] != outcomes[i]}
    events = service.terminal_events()
    twice = {i: hooks for i, hooks in events.items() if i in set(ids) and len(hooks) > 1}
    new_records = service.job_records() - records_before
    statuses = service.statuses(ids) or {}
    print(
        f"\nold primary back with its data ({len(unfinished_there)} of {len(held)} jobs "
        f"unfinished in its copy, all finished on the new primary): replica again "
        f"{rejoined_s:.1f} s after the promotion; {len(ids)} accepted, "
        f"{sum(s == 'succeeded' for s in statuses.values())} succeeded, {len(changed)} changed "
        f"after it came back, {len(new_records) - len(set(ids))} duplicated, {len(twice)} with "
        f"two terminal webhooks"
    )
    assert not changed, f"jobs changed after the old primary came back: {list(changed.items())[:3]}"
    assert new_records == set(ids), "a job stored beyond one per key"
    assert all(statuses.get(i) == "succeeded" for i in ids), statuses
    assert not twice, f"two terminal events for a job: {list(twice.items())[:3]}"
    service.assert_all_running()
