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


def test_every_setting_is_documented_in_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [env for env, _, _ in Settings.documented() if f"`{env}`" not in readme]
    assert missing == []
