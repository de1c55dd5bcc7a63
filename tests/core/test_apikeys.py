"""API keys against a real Redis."""

from __future__ import annotations

import hashlib
import time

import pytest
import redis

from internvl_queue.core.apikeys import ApiKey, ApiKeyStore, parse_key


@pytest.fixture
def store(redis_client: redis.Redis) -> ApiKeyStore:
    return ApiKeyStore(redis_client)


def _all_redis_bytes(client: redis.Redis) -> list[bytes]:
    """Every key name and every value in the test DB, whatever the type."""
    found: list[bytes] = []
    for key in client.scan_iter(count=1000):
        found.append(key)
        kind = client.type(key)
        if kind == b"string":
            found.append(client.get(key))
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                found += [field, value]
        elif kind == b"set":
            found += list(client.smembers(key))
        elif kind == b"list":
            found += client.lrange(key, 0, -1)
        elif kind == b"zset":
            found += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            raise AssertionError(f"unexpected Redis type {kind!r} for {key!r}")
    return found


def test_create_returns_a_key_that_authenticates(store: ApiKeyStore) -> None:
    before = time.time()
    key, plaintext = store.create("ci pipeline")
    assert plaintext.startswith(f"iq_{key.id}_")
    assert parse_key(plaintext) is not None
    assert len(key.id) == 12 and int(key.id, 16) >= 0
    assert key.name == "ci pipeline" and key.active and key.revoked_at is None
    assert before <= key.created_at <= time.time()
    assert store.authenticate(plaintext) == key
    assert store.any_active()


def test_keys_are_distinct(store: ApiKeyStore) -> None:
    (a, key_a), (b, key_b) = store.create("a"), store.create("b")
    assert a.id != b.id and key_a != key_b
    assert store.authenticate(key_a) == a and store.authenticate(key_b) == b


def test_the_plaintext_is_never_stored(store: ApiKeyStore, redis_client: redis.Redis) -> None:
    _, plaintext = store.create("secretive")
    secret = plaintext.split("_", 2)[2]
    stored = _all_redis_bytes(redis_client)
    assert stored, "the scan found nothing: it would prove nothing"
    assert not [b for b in stored if secret.encode() in b or plaintext.encode() in b]
    # What is stored is the hash, so the scan did look where the secret would have been.
    digest = hashlib.sha256(secret.encode()).hexdigest().encode()
    assert any(digest in b for b in stored)


def test_wrong_secret_with_a_right_id_fails(store: ApiKeyStore) -> None:
    key, plaintext = store.create("x")
    secret = plaintext.split("_", 2)[2]
    flipped = ("A" if secret[0] != "A" else "B") + secret[1:]
    assert store.authenticate(f"iq_{key.id}_{flipped}") is None
    assert store.authenticate(f"iq_{key.id}_{secret}x") is None
    # Another key's secret under this id fails too.
    _, other = store.create("y")
    assert store.authenticate(f"iq_{key.id}_{other.split('_', 2)[2]}") is None


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "iq_",
        "iq__",
        "Bearer iq_0123456789ab_abc",
        "xx_0123456789ab_abc",
        "iq_0123456789ab",
        "iq_0123456789ab_",
        "iq_0123456789AB_abc",  # ids are lower-case hex
        "iq_0123456789a_abc",  # 11 characters
        "iq_0123456789abc_abc",  # 13 characters
        "iq_0123456789ab_" + "a" * 5000,
    ],
)
def test_malformed_keys_fail(store: ApiKeyStore, presented: str) -> None:
    store.create("present, so an unparsed id could match something")
    assert store.authenticate(presented) is None


def test_unknown_id_fails(store: ApiKeyStore) -> None:
    key, plaintext = store.create("x")
    other_id = "0" * 12 if key.id != "0" * 12 else "1" * 12
    assert store.authenticate(plaintext.replace(key.id, other_id)) is None


def test_revoke(store: ApiKeyStore) -> None:
    key, plaintext = store.create("leaked")
    kept, kept_plaintext = store.create("kept")
    assert store.revoke(key.id) is True
    assert store.authenticate(plaintext) is None
    assert store.authenticate(kept_plaintext) == kept
    revoked = store.get(key.id)
    assert revoked is not None and not revoked.active and revoked.revoked_at is not None
    assert store.revoke(key.id) is False  # already revoked
    assert store.get(key.id) == revoked  # and its revocation time is kept
    assert store.revoke("0123456789ab") is False  # unknown


def test_any_active_follows_creation_and_revocation(store: ApiKeyStore) -> None:
    assert not store.any_active()
    a, _ = store.create("a")
    b, _ = store.create("b")
    store.revoke(a.id)
    assert store.any_active()
    store.revoke(b.id)
    assert not store.any_active()


def test_list_is_sorted_by_creation_and_includes_revoked(store: ApiKeyStore) -> None:
    assert store.list() == []
    created = [store.create(name)[0] for name in ("first", "second", "third")]
    store.revoke(created[1].id)
    listed = store.list()
    assert [k.name for k in listed] == ["first", "second", "third"]
    assert [k.active for k in listed] == [True, False, True]
    assert all(isinstance(k, ApiKey) for k in listed)


@pytest.mark.parametrize("name", ["", " ", "a" * 101, "tab\there", "new\nline", "\x00"])
def test_invalid_names_are_refused(
    store: ApiKeyStore, redis_client: redis.Redis, name: str
) -> None:
    with pytest.raises(ValueError, match="printable"):
        store.create(name)
    assert store.list() == [] and not store.any_active()


def test_names_up_to_100_printable_characters(store: ApiKeyStore) -> None:
    key, _ = store.create("ü" * 100)
    assert store.get(key.id) == key
