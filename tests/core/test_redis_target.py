"""REDIS_SENTINELS / REDIS_MASTER_NAME: validated at start in one sentence, and turned into the
Celery broker URL and options kombu's sentinel transport reads."""

from __future__ import annotations

import pytest

from internvl_queue.core.redis_client import RedisTarget, parse_sentinels
from internvl_queue.core.settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("env", "sentence"),
    [
        (
            {"REDIS_SENTINELS": "10.0.0.1:26379"},
            "REDIS_SENTINELS is set: REDIS_MASTER_NAME must name the primary",
        ),
        (
            {"REDIS_MASTER_NAME": "mymaster"},
            "REDIS_MASTER_NAME is set: REDIS_SENTINELS must list the sentinels",
        ),
        (
            {"REDIS_SENTINELS": "10.0.0.1:26379,10.0.0.2", "REDIS_MASTER_NAME": "m"},
            "REDIS_SENTINELS: '10.0.0.2' is not host:port",
        ),
        (
            {"REDIS_SENTINELS": "10.0.0.1:99999", "REDIS_MASTER_NAME": "m"},
            "REDIS_SENTINELS: '10.0.0.1:99999' is not host:port",
        ),
        (
            {
                "REDIS_SENTINELS": "10.0.0.1:26379",
                "REDIS_MASTER_NAME": "m",
                "REDIS_URL": "rediss://10.0.0.1:6379/0",
            },
            "REDIS_URL must be redis:// (not TLS or a socket) with REDIS_SENTINELS",
        ),
    ],
)
def test_wrong_sentinel_settings_are_one_sentence(env: dict[str, str], sentence: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env)
    assert str(raised.value) == sentence


def test_sentinels_parse_with_spaces_and_ipv6() -> None:
    assert parse_sentinels(" a:1, [::1]:26379 ,") == (("a", 1), ("::1", 26379))
    settings = Settings.from_env(
        {"REDIS_SENTINELS": "s1:26379,s2:26380", "REDIS_MASTER_NAME": "iq"}
    )
    assert settings.redis_target.uses_sentinel
    assert settings.redis_target.master_name == "iq"
    assert not Settings.from_env({}).redis_target.uses_sentinel


def test_the_broker_url_carries_the_primarys_database_and_password() -> None:
    target = RedisTarget(
        "redis://:p%40ss@ignored:6379/4", (("s1", 26379), ("::1", 26380)), "iq", "sentinel-pw"
    )
    assert target.celery_broker_url() == (
        "sentinel://:p%40ss@s1:26379/4;sentinel://:p%40ss@[::1]:26380/4"
    )
    options = target.celery_transport_options()
    assert options["master_name"] == "iq"
    assert options["sentinel_kwargs"]["password"] == "sentinel-pw"
    assert "p%40ss" not in target.describe() and "iq" in target.describe()
    plain = RedisTarget("redis://h:1/0")
    assert plain.celery_broker_url() == "redis://h:1/0"
    assert plain.celery_transport_options() == {}


def test_the_celery_app_keeps_its_transport_options_with_sentinels() -> None:
    from internvl_queue.queue import create_celery

    settings = Settings.from_env({"REDIS_SENTINELS": "s1:26379", "REDIS_MASTER_NAME": "iq"})
    app = create_celery(settings)
    options = app.conf.broker_transport_options
    assert options["master_name"] == "iq"
    assert options["queue_order_strategy"] == "priority"
    assert options["visibility_timeout"] == settings.visibility_timeout_s
    assert app.conf.broker_url.startswith("sentinel://s1:26379/0")
