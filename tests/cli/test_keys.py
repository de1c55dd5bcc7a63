"""``internvl-queue keys`` as a real subprocess against the test Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from internvl_queue.cli import local_service
from internvl_queue.cli.local_service import RunningService
from internvl_queue.cli.redis_server import free_port
from internvl_queue.core.apikeys import ApiKeyStore
from tests.api.lifecycle_helpers import json_body


def keys_cli(
    redis_url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "internvl_queue", "keys", *args],
        env=env or {**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def store(redis_client: redis.Redis) -> ApiKeyStore:
    return ApiKeyStore(redis_client)


def test_create_prints_the_key_last_and_it_authenticates(
    redis_url: str, store: ApiKeyStore
) -> None:
    done = keys_cli(redis_url, "create", "--name", "ci runner")
    assert done.returncode == 0, done.stderr
    *explanation, plaintext = done.stdout.strip().splitlines()
    key = store.authenticate(plaintext)
    assert key is not None and key.name == "ci runner"
    text = "\n".join(explanation)
    assert key.id in text and "ci runner" in text and "shown once" in text
    assert plaintext not in text  # the key appears once, on its own line


def test_list_shows_keys_without_secrets(redis_url: str, store: ApiKeyStore) -> None:
    first = keys_cli(redis_url, "create", "--name", "alpha").stdout.strip().splitlines()[-1]
    second = keys_cli(redis_url, "create", "--name", "beta").stdout.strip().splitlines()[-1]
    beta = store.authenticate(second)
    assert beta is not None and store.revoke(beta.id)
    done = keys_cli(redis_url, "list")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.strip().splitlines()
    assert header.split() == ["ID", "NAME", "CREATED", "STATUS"]
    alpha = store.authenticate(first)
    assert alpha is not None
    [alpha_row] = [r for r in rows if alpha.id in r]
    [beta_row] = [r for r in rows if beta.id in r]
    assert "alpha" in alpha_row and alpha_row.rstrip().endswith("active")
    assert "beta" in beta_row and " revoked 20" in beta_row
    assert "T" in alpha_row.split()[2] and alpha_row.split()[2].endswith("+00:00")  # ISO-8601
    for plaintext in (first, second):
        assert plaintext.split("_", 2)[2] not in done.stdout


def test_list_with_no_keys_says_the_api_is_open(redis_url: str, store: ApiKeyStore) -> None:
    done = keys_cli(redis_url, "list")
    assert done.returncode == 0 and "open" in done.stdout


def test_revoke_stops_the_key(redis_url: str, store: ApiKeyStore) -> None:
    plaintext = keys_cli(redis_url, "create", "--name", "x").stdout.strip().splitlines()[-1]
    key = store.authenticate(plaintext)
    assert key is not None
    done = keys_cli(redis_url, "revoke", key.id)
    assert done.returncode == 0, done.stderr
    assert store.authenticate(plaintext) is None
    assert not store.any_active()


def test_revoke_an_unknown_id_fails(redis_url: str, store: ApiKeyStore) -> None:
    done = keys_cli(redis_url, "revoke", "0123456789ab")
    assert done.returncode == 1
    assert "no API key with id '0123456789ab'" in done.stderr


def test_create_refuses_a_bad_name(redis_url: str, store: ApiKeyStore) -> None:
    done = keys_cli(redis_url, "create", "--name", "x" * 101)
    assert done.returncode == 2 and "printable" in done.stderr
    assert done.stdout == "" and store.list() == []


def test_without_redis_url_keys_use_the_redis_of_the_running_up(
    redis_url: str, store: ApiKeyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a running ``up`` leaves in its data directory (this test process stands in for it).
    RunningService(os.getpid(), redis_url, "http://127.0.0.1:9").write(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "INTERNVL_API")}
    env["INTERNVL_DATA_DIR"] = str(tmp_path)
    # Checked here first, so that a broken lookup fails the test instead of writing a key into
    # whatever Redis answers on the default port.
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("INTERNVL_DATA_DIR", str(tmp_path))
    assert local_service.redis_url() == redis_url
    done = keys_cli("", "create", "--name", "found up", env=env)
    assert done.returncode == 0, done.stderr
    key = store.authenticate(done.stdout.strip().splitlines()[-1])
    assert key is not None and key.name == "found up"


FIRST_KEY_WARNING = "the jobs submitted while it was open belong to no key and answer 404"


def test_the_first_key_warns_that_open_mode_jobs_vanish(
    redis_url: str, store: ApiKeyStore, client: FlaskClient
) -> None:
    job = client.post("/v1/jobs", json=json_body()).json  # open mode: the job has no owner
    done = keys_cli(redis_url, "create", "--name", "first")
    assert done.returncode == 0, done.stderr
    assert FIRST_KEY_WARNING in done.stderr and len(done.stderr.splitlines()) == 1
    key = done.stdout.strip().splitlines()[-1]
    # What the warning says: the open-mode job now answers 404, with the new key too.
    reply = client.get(f"/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 404
    second = keys_cli(redis_url, "create", "--name", "second")
    assert second.returncode == 0 and second.stderr == ""  # only the first key closes the API


def test_the_first_key_does_not_warn_without_open_mode_jobs(
    redis_url: str, store: ApiKeyStore, client: FlaskClient
) -> None:
    old = keys_cli(redis_url, "create", "--name", "old").stdout.strip().splitlines()[-1]
    client.post("/v1/jobs", json=json_body(), headers={"Authorization": f"Bearer {old}"})
    old_key = store.authenticate(old)
    assert old_key is not None and store.revoke(old_key.id)  # open again; its job keeps its owner
    done = keys_cli(redis_url, "create", "--name", "new")
    assert done.returncode == 0 and done.stderr == ""


def test_an_unreachable_redis_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": f"redis://:secret@127.0.0.1:{free_port()}/0"}
    done = keys_cli("", "list", env=env)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("internvl-queue keys: cannot reach Redis at 127.0.0.1:")
    assert "set REDIS_URL" in line and "secret" not in line
