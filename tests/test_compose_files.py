"""The compose deployment's files keep up with the settings: every setting reaches the containers
from .env, and .env.example lists it (scripts/test-compose.sh runs the stack itself)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from internvl_queue.core.settings import Settings
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
# REDIS_URL is always the stack's own Redis; INTERNVL_GPU_INDEX and INTERNVL_GPU_GROUP are set by
# `worker --gpus` itself.
NOT_FROM_ENV_FILE = {"REDIS_URL", "INTERNVL_GPU_INDEX", "INTERNVL_GPU_GROUP"}


def settings_from_env_file() -> list[str]:
    return [env for env, _, _ in Settings.documented() if env not in NOT_FROM_ENV_FILE]


def test_compose_passes_every_setting_from_env_file() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    missing = [v for v in settings_from_env_file() if f"  {v}: ${{{v}:-}}" not in compose]
    assert not missing, f"docker-compose.yml does not pass {missing} from .env"
    assert "  REDIS_URL: redis://redis:6379/0" in compose


def test_env_example_lists_every_setting_with_its_default() -> None:
    example = (ROOT / ".env.example").read_text()
    defaults = {env: default for env, default, _ in Settings.documented()}
    for env in settings_from_env_file():
        found = re.search(rf"^#?{env}=(.*)$", example, re.MULTILINE)
        assert found, f".env.example does not list {env}"
        shown = found.group(1)
        assert shown == "" or shown.lower() == defaults[env].lower(), (env, shown)


def test_only_the_api_port_is_published_and_prometheus_only_on_loopback() -> None:
    services = _compose_file("docker-compose.yml")["services"]
    published = {name: spec["ports"] for name, spec in services.items() if "ports" in spec}
    assert published == {
        "api": ["${INTERNVL_API_PORT:-8000}:8000"],
        "prometheus": ["127.0.0.1:${PROMETHEUS_PORT:-9090}:9090"],
    }
    assert "expose:" not in (ROOT / "docker-compose.yml").read_text()


def test_prometheus_starts_only_with_the_metrics_profile() -> None:
    services = _compose_file("docker-compose.yml")["services"]
    profiles = {name: spec.get("profiles") for name, spec in services.items()}
    # A service with a profile is not started by a plain `up`; every other one is.
    assert profiles.pop("prometheus") == ["metrics"]
    assert set(profiles) == {"redis", "api", "worker", "webhook-worker"}
    assert set(profiles.values()) == {None}
    # Nothing turns the profile on by default: not .env.example, not the compose test (which
    # has no registry to pull prom/prometheus from).
    example = (ROOT / ".env.example").read_text()
    assert re.findall(r"^COMPOSE_PROFILES=.*$", example, re.MULTILINE) == []
    script = (ROOT / "scripts" / "test-compose.sh").read_text()
    assert "--profile" not in script and "COMPOSE_PROFILES" not in script
    assert "prometheus" not in script


def test_prometheus_scrapes_the_api_metrics() -> None:
    prometheus = _compose_file("docker-compose.yml")["services"]["prometheus"]
    assert "./compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    [job] = _compose_file("compose/prometheus.yml")["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["api:8000"]}]


def test_the_dashboard_queries_only_documented_metrics() -> None:
    dashboard = json.loads((ROOT / "compose" / "grafana" / "internvl-queue.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {
        re.sub(r"_(bucket|total)$", "", name)
        for expr in exprs
        for name in re.findall(r"internvl_queue_\w+", expr)
    }
    documented = set(
        re.findall(r"`(internvl_queue_\w+)`", (ROOT / "docs" / "metrics.md").read_text())
    )
    assert used and used <= {re.sub(r"_total$", "", name) for name in documented}, used - documented


def _compose_file(path: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / path).read_text())
    return loaded


DEPLOYMENT = "docs/deployment.md"  # where the compose commands are documented


def _doc_section(title: str, path: str = DEPLOYMENT) -> str:
    """The section of a document under heading ``title``, down to the next heading of its level
    or above."""
    lines = (ROOT / path).read_text().splitlines()
    start = lines.index(title)
    level = len(title.split(" ", 1)[0])
    fenced = False  # a `# comment` in a ```sh block is no heading
    for end in range(start + 1, len(lines)):
        line = lines[end]
        fenced ^= line.startswith("```")
        heading = re.match(r"(#+) ", line)
        if not fenced and heading and len(heading.group(1)) <= level:
            break
    else:
        end = len(lines)
    return "\n".join(lines[start:end]) + "\n"


def _shell_lines(markdown: str) -> list[str]:
    """The lines of the ```sh blocks in ``markdown``."""
    return [
        line
        for block in re.findall(r"^```sh\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)
        for line in block.splitlines()
    ]


def test_the_gpu_reservation_has_a_file_of_its_own() -> None:
    # An override cannot remove a device reservation, and Docker refuses to start a container
    # reserving a driver it lacks: docker-compose.yml + compose/cpu.yml must reserve nothing.
    for path in ("docker-compose.yml", "compose/cpu.yml"):
        assert "deploy" not in str(_compose_file(path)["services"]), path
    worker = _compose_file("compose/gpu.yml")["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    # A plain `docker compose up -d` with .env copied from .env.example uses the GPU file.
    example = (ROOT / ".env.example").read_text()
    assert re.findall(r"^COMPOSE_FILE=(.*)$", example, re.MULTILINE) == [
        "docker-compose.yml:compose/gpu.yml"
    ]


def test_the_documented_compose_commands_work_outside_a_terminal_and_carry_the_key() -> None:
    lines = _shell_lines(_doc_section("## Deploy with docker compose"))
    execs = [line for line in lines if re.search(r"docker[ -]compose .*\bexec\b", line)]
    curls = [line for line in lines if line.startswith("curl ") and "/v1/" in line]
    assert execs and curls
    for line in execs:  # without -T, exec wants a terminal: a script or CI has none
        assert re.search(r"\bexec -T\b", line), line
    for line in curls:  # API keys are required by default: a keyless request gets 401
        assert '-H "Authorization: Bearer $KEY"' in line, line
    prose = _doc_section("## Deploy with docker compose")
    assert "compose exec api" not in prose, f"an exec without -T in {DEPLOYMENT}'s prose"


def test_the_compose_test_runs_the_documented_cpu_commands_as_written() -> None:
    """scripts/test-compose.sh finds these commands in docs/deployment.md by how they start and runs
    them as written; the documented CPU start is the plain pair of files, no edited config."""
    commands = _shell_lines(_doc_section("### Without a GPU"))
    script = (ROOT / "scripts" / "test-compose.sh").read_text()
    assert f"docs_file={DEPLOYMENT}" in script  # the file it reads them from
    run = re.findall(r"run_documented_command '([^']+)'", script)
    assert sorted(run) == sorted(
        ["docker-compose -f docker-compose.yml -f compose/cpu.yml up -d", "KEY=$(", "curl "]
    )
    for start in run:
        found = [c for c in commands if c.startswith(start)]
        assert found, f"no command of {DEPLOYMENT} starts {start!r}"
    assert commands[0] == "docker-compose -f docker-compose.yml -f compose/cpu.yml up -d --build"
    # No `compose ... config` whose output is edited and run instead (the old GPU workaround).
    assert not re.search(r"(cpu\.yml|\bcompose) config\b", script)


SENTINEL_FILES = ("docker-compose.yml", "compose/cpu.yml", "compose/sentinel.yml")
THE_SERVICE = ("api", "worker", "webhook-worker")


def test_the_sentinel_override_points_every_process_at_the_three_sentinels() -> None:
    services = _compose_file("compose/sentinel.yml")["services"]
    sentinels = sorted(name for name in services if name.startswith("sentinel-"))
    assert sentinels == ["sentinel-1", "sentinel-2", "sentinel-3"]
    listed = ",".join(f"{name}:26379" for name in sentinels)
    for name in THE_SERVICE:
        env = services[name]["environment"]
        assert env["REDIS_SENTINELS"] == listed, name
        assert env["REDIS_MASTER_NAME"] == "${REDIS_MASTER_NAME:-internvl}", name
        assert set(services[name]["depends_on"]) == set(sentinels), name
    # By default (compose's), the sentinels monitor `redis` first, under the name the processes
    # ask for, and each Redis node asks them, in the same order, which node is the primary before
    # it starts (tests/test_compose_sentinel_scripts.py runs both scripts).
    for script in ("sentinel.sh", "redis-node.sh"):
        assert "${FIRST_PRIMARY:-redis:6379}" in (ROOT / "compose" / script).read_text(), script
    node = (ROOT / "compose" / "redis-node.sh").read_text()
    assert f"${{SENTINELS:-{listed.replace(',', ' ')}}}" in node
    for name in ("redis", "redis-replica"):
        assert services[name]["environment"]["REDIS_NODE"] == name
        assert (
            "./compose/redis.conf:/usr/local/etc/redis/redis.conf:ro" in services[name]["volumes"]
        )


def test_the_compose_test_runs_the_documented_sentinel_commands_as_written() -> None:
    """scripts/test-compose.sh switches its stack to Sentinel and fails it over with the commands
    of the section "Under docker compose", found there whole (prefix + what the script adds)."""
    commands = _shell_lines(_doc_section("### Under docker compose: compose/sentinel.yml"))
    script = (ROOT / "scripts" / "test-compose.sh").read_text()
    prefix = re.search(r"^sentinel_compose='([^']+)'$", script, re.MULTILINE)
    assert prefix and prefix.group(1) == "docker-compose " + " ".join(
        f"-f {path}" for path in SENTINEL_FILES
    )
    run = re.findall(r"sentinel_command ['\"]([^'\"]+)['\"]", script)
    assert len(run) == 5, run
    for tail in run:
        whole = f"{prefix.group(1)} {tail.replace('$master_name', 'internvl')}"
        found = [c for c in commands if c.startswith(whole)]
        assert found, f"no command of {DEPLOYMENT}'s Sentinel section starts {whole!r}"


# Never skipped in CI: scripts/setup.sh test installs docker-compose.
@pytest.mark.skipif(
    shutil.which("docker-compose") is None and not IN_CI,
    reason="docker-compose is not installed (./scripts/test.sh installs it)",
)
def test_docker_compose_accepts_the_sentinel_override() -> None:
    """``docker-compose config`` (1.29, as scripts/test-compose.sh installs it) merges the files:
    the override's settings reach the service's containers next to the base file's."""
    command = ["docker-compose", *(f"-f{path}" for path in SENTINEL_FILES), "config"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "REDIS_"))}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    merged = yaml.safe_load(done.stdout)["services"]
    assert {"redis", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(merged)
    for name in THE_SERVICE:
        env_of = merged[name]["environment"]
        assert env_of["REDIS_SENTINELS"] == "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379"
        assert env_of["REDIS_MASTER_NAME"] == "internvl"
        assert str(env_of["INTERNVL_REDIS_MIN_REPLICAS"]) == "1"
        # The base file's settings are kept beside them (its REDIS_URL: the database number).
        assert env_of["REDIS_URL"] == "redis://redis:6379/0" and "WEBHOOK_SECRETS" in env_of
        assert set(merged[name]["depends_on"]) >= {"redis", "sentinel-1", "sentinel-2"}
    assert merged["redis"]["command"] == ["sh", "/usr/local/bin/redis-node.sh"]
    assert merged["worker"]["environment"]["INTERNVL_DEVICE"] == "cpu"  # cpu.yml still applies
