import re

import pytest

from internvl_queue.core.settings import DEFAULT_MODEL, Settings


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.model == DEFAULT_MODEL
    assert s.max_request_bytes == 20 * 1024 * 1024
    assert s.max_image_pixels == 40_000_000
    assert s.max_tiles == 12
    assert s.job_retention_s == 86400


def test_reads_environment() -> None:
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://h:1/2",
            "INTERNVL_MAX_TILES": "6",
            "INTERNVL_DEVICE": "cpu",
            "INTERNVL_HEARTBEAT_S": "0.5",
        }
    )
    assert (s.redis_url, s.max_tiles, s.device, s.heartbeat_interval_s) == (
        "redis://h:1/2",
        6,
        "cpu",
        0.5,
    )


@pytest.mark.parametrize(
    "env",
    [
        {"INTERNVL_MAX_TILES": "13"},
        {"INTERNVL_MAX_TILES": "many"},
        {"INTERNVL_DEVICE": "tpu"},
        {"INTERNVL_DEFAULT_MAX_NEW_TOKENS": "5000"},
        {"INTERNVL_JOB_RETENTION_S": "0"},
        # Retention shorter than the webhook retry window: events would outlive their jobs.
        {"INTERNVL_JOB_RETENTION_S": "3600"},
        {"WEBHOOK_RETRY_SCHEDULE": "5,100000"},
        {"WEBHOOK_RETRY_SCHEDULE": "5,soon"},
        {"WEBHOOK_RETRY_SCHEDULE": ","},
        {"WEBHOOK_SECRETS": "not-a-whsec"},
        {"WEBHOOK_SECRETS": "whsec_!!!"},
        {"WEBHOOK_SECRETS": "whsec_c2hvcnQ="},  # 5 bytes
        {"WEBHOOK_ALLOWED_CIDRS": "10.0.0.0/33"},
        {"INTERNVL_AUTH": "maybe"},
        {"INTERNVL_MAX_QUEUED_BYTES": "-1"},
        {"INTERNVL_MAX_WAITERS": "0"},
    ],
)
def test_rejects_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Settings.from_env(env)


def test_webhook_settings_are_parsed() -> None:
    s = Settings.from_env(
        {
            "WEBHOOK_SECRETS": (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ="
            ),
            "WEBHOOK_RETRY_SCHEDULE": "1,2.5",
            "WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8,::1/128",
            "WEBHOOK_TIMEOUT_S": "2",
        }
    )
    assert len(s.webhook_secret_list) == 2
    assert s.webhook_schedule == (1.0, 2.5)
    assert [str(n) for n in s.webhook_allowed_networks] == ["127.0.0.0/8", "::1/128"]
    assert s.webhook_window_s == 1 + 2.5 + s.webhook_lease_s


def test_every_setting_is_documented_in_the_configuration_table() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]*) \|", doc, re.MULTILINE)
    documented = {env: default.strip() for env, default in rows}
    missing = [env for env, _, _ in Settings.documented() if env not in documented]
    assert missing == []
    # Each row's default is the code's (booleans written in lower case, no value as "(none)").
    stale = [
        (env, default, documented[env])
        for env, default, _ in Settings.documented()
        if documented[env].strip("`") not in {default, default.lower(), default.removesuffix(".0")}
        and not (default == "" and documented[env] == "(none)")
    ]
    assert stale == []


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # The case: a max below the default would give jobs a timeout above the max.
        ({"INTERNVL_MAX_TIMEOUT_S": "300"}, "INTERNVL_DEFAULT_TIMEOUT_S (600) must not exceed"),
        (
            {"INTERNVL_DEFAULT_TIMEOUT_S": "30", "INTERNVL_MAX_TIMEOUT_S": "20"},
            "INTERNVL_MAX_TIMEOUT_S (20)",
        ),
        # A message redelivered while its job still runs: two workers on one job.
        ({"INTERNVL_VISIBILITY_TIMEOUT_S": "1800"}, "INTERNVL_VISIBILITY_TIMEOUT_S (1800)"),
        (
            {"INTERNVL_MAX_TIMEOUT_S": "7200", "INTERNVL_VISIBILITY_TIMEOUT_S": "3600"},
            "must be at least INTERNVL_MAX_TIMEOUT_S (7200)",
        ),
        # A record that expires while its job may still run.
        (
            {
                "INTERNVL_MAX_TIMEOUT_S": "100000",
                "INTERNVL_VISIBILITY_TIMEOUT_S": "100000",
                "INTERNVL_JOB_RETENTION_S": "90000",
            },
            "INTERNVL_JOB_RETENTION_S (90000) must exceed INTERNVL_MAX_TIMEOUT_S",
        ),
        # A job queued until its deadline would expire before it is marked timeout.
        (
            {
                "INTERNVL_MAX_TIMEOUT_S": "90000",
                "INTERNVL_VISIBILITY_TIMEOUT_S": "90000",
                "INTERNVL_JOB_RETENTION_S": "90030",
            },
            "INTERNVL_JOB_RETENTION_S (90030) must exceed INTERNVL_MAX_TIMEOUT_S (90000) by at",
        ),
        ({"INTERNVL_DEFAULT_TIMEOUT_S": "0"}, "must be positive"),
    ],
)
def test_contradictory_settings_are_refused_in_one_sentence(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ValueError) as refused:
        Settings.from_env(env)
    message = str(refused.value)
    assert named in message
    assert "\n" not in message and message.count(". ") == 0


def test_settings_built_in_code_are_validated_too() -> None:
    with pytest.raises(ValueError, match="INTERNVL_DEFAULT_TIMEOUT_S"):
        Settings(max_timeout_s=300)
    with pytest.raises(ValueError, match="INTERNVL_AUTH"):
        Settings(auth="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="INTERNVL_MAX_IMAGES must be positive"):
        Settings(max_images=0)
    # Agreeing values pass: the default may equal the max.
    assert Settings(default_timeout_s=300, max_timeout_s=300).max_timeout_s == 300


def test_auth_is_required_unless_set_open() -> None:
    assert Settings.from_env({}).auth == "required"
    assert Settings.from_env({"INTERNVL_AUTH": "open"}).auth == "open"
