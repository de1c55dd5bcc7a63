"""compose/sentinel.yml's two start scripts, run for real: Redis nodes and sentinels on loopback.

``compose/redis-node.sh`` and ``compose/sentinel.sh`` take compose's names and ports by default;
here every node is ``localhost`` on a free port, and the image's ``docker-entrypoint.sh`` is a
shim that runs its arguments. What compose relies on: the first node starts as the primary, the
second as its replica; after the primary is SIGKILLed and a replica promoted, the old primary,
started again by its script with its data, is a replica from its first answer (never a second
primary), and its data is replaced by the new primary's; a restarted sentinel keeps what it learnt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from internvl_queue.cli.redis_server import free_port
from internvl_queue.cli.supervisor import spawn_tied
from tests.reliability.harness import wait_for

ROOT = Path(__file__).resolve().parent.parent
NAME = "iq-compose"

pytestmark = pytest.mark.skipif(
    not (shutil.which("redis-server") and shutil.which("redis-cli")),
    reason="redis-server and redis-cli are needed (scripts/setup.sh installs them)",
)


@dataclass
class Layout:
    root: Path
    node_ports: dict[str, int]
    sentinel_ports: list[int]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self, **more: str) -> dict[str, str]:
        shim = self.root / "bin"
        return {
            **os.environ,
            "PATH": f"{shim}:{os.environ['PATH']}",
            "REDIS_MASTER_NAME": NAME,
            "FIRST_PRIMARY": f"localhost:{self.node_ports['a']}",
            "SENTINELS": " ".join(f"localhost:{p}" for p in self.sentinel_ports),
            **more,
        }

    def start_node(self, node: str) -> None:
        where = self.root / node
        where.mkdir(exist_ok=True)
        conf = where / "redis.conf"
        conf.write_text(f'bind 127.0.0.1\ndir {where}\nappendonly yes\nsave ""\n')
        env = self.env(REDIS_NODE="localhost", REDIS_PORT=str(self.node_ports[node]))
        self._spawn(node, ["sh", str(ROOT / "compose" / "redis-node.sh")], env, conf=str(conf))

    def start_sentinel(self, index: int) -> None:
        where = self.root / f"sentinel{index}"
        where.mkdir(exist_ok=True)
        env = self.env(
            SENTINEL_DIR=str(where),
            SENTINEL_PORT=str(self.sentinel_ports[index]),
            SENTINEL_DOWN_AFTER_MS="1000",
        )
        self._spawn(f"sentinel{index}", ["sh", str(ROOT / "compose" / "sentinel.sh")], env)

    def _spawn(self, name: str, command: list[str], env: dict[str, str], conf: str = "") -> None:
        if conf:
            env = {**env, "REDIS_CONF": conf}
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        self.processes[name] = spawn_tied(command, env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        port = self.node_ports.get(name) or self.sentinel_ports[int(name[-1])]
        self.wait_for(lambda: _answers(port), f"{name} to answer", 20)

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30) -> None:
        """``wait_for``, failing with the logs as they are at the timeout."""
        try:
            wait_for(check, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def primary(self, sentinel: int = 0) -> str | None:
        try:
            with redis.Redis(port=self.sentinel_ports[sentinel], socket_timeout=1) as client:
                found = client.sentinel_get_master_addr_by_name(NAME)
        except redis.RedisError:
            return None
        if not found:
            return None
        host = found[0].decode() if isinstance(found[0], bytes) else found[0]
        return f"{host}:{found[1]}"

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-1200:]}"
            for log in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def _answers(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def _replication(port: int) -> dict[str, object]:
    with redis.Redis(port=port, socket_timeout=2) as client:
        return dict(client.info("replication"))


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    shim = tmp_path / "bin"
    shim.mkdir()
    # The redis image's entrypoint (it drops to the redis user): here, run the command as is.
    (shim / "docker-entrypoint.sh").write_text('#!/bin/sh\nexec "$@"\n')
    (shim / "docker-entrypoint.sh").chmod(0o755)
    found = Layout(tmp_path, {"a": free_port(), "b": free_port()}, [free_port() for _ in range(3)])
    try:
        yield found
    finally:
        found.stop()


def test_a_node_back_after_a_failover_starts_as_the_new_primarys_replica(layout: Layout) -> None:
    a, b = (f"localhost:{layout.node_ports[n]}" for n in ("a", "b"))
    layout.start_node("a")  # no sentinel answers yet: the first primary
    assert _replication(layout.node_ports["a"])["role"] == "master"
    for index in range(3):
        layout.start_sentinel(index)
    layout.start_node("b")  # the sentinels name a: b starts as its replica
    assert _replication(layout.node_ports["b"])["role"] == "slave"

    def all_see(primary: str, replicas: int) -> bool:
        for port in layout.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as client:
                    state = client.sentinel_master(NAME)
            except redis.RedisError:
                return False
            seen = f"{state['ip']}:{state['port']}"
            if seen != primary or int(state["num-slaves"]) < replicas:
                return False
            if int(state["num-other-sentinels"]) < 2:
                return False
        return True

    layout.wait_for(lambda: all_see(a, 1), "the sentinels to see a and b")
    with redis.Redis(port=layout.node_ports["a"]) as primary:
        primary.set("iq:written-on", "a")
        primary.wait(1, 2000)

    layout.kill("a")
    layout.wait_for(lambda: layout.primary() == b, "the sentinels to promote b")
    layout.wait_for(lambda: _replication(layout.node_ports["b"])["role"] == "master", "b promoted")
    with redis.Redis(port=layout.node_ports["b"]) as new_primary:
        new_primary.set("iq:written-on", "b")

    # a comes back with its AOF (which says iq:written-on = a): asked first, the sentinels name
    # b, so it starts as b's replica and answers as one from its first reply on.
    layout.start_node("a")
    assert _replication(layout.node_ports["a"])["role"] == "slave"
    assert "starts as a replica of " + b in (layout.root / "a.log").read_text()

    def synced() -> bool:
        info = _replication(layout.node_ports["a"])
        return info.get("master_link_status") == "up"

    layout.wait_for(synced, "a to sync from b")
    with redis.Redis(port=layout.node_ports["a"]) as old:
        assert old.get("iq:written-on") == b"b"  # its own data was replaced
    assert layout.primary() == b

    # A restarted sentinel starts from the configuration it rewrote (b is the primary), not
    # from FIRST_PRIMARY (a).
    layout.kill("sentinel0")
    layout.start_sentinel(0)
    assert layout.primary(0) == b
    assert "sentinel monitor" in (layout.root / "sentinel0" / "sentinel.conf").read_text()
