"""``internvl-queue keys`` as a real subprocess against the test Redis."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from internvl_queue.core.apikeys import ApiKeyStore


def keys_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "internvl_queue", "keys", *args],
        env={**os.environ, "REDIS_URL": redis_url},
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
