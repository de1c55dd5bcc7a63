"""The compose deployment's files keep up with the settings: every setting reaches the containers
from .env, and .env.example lists it (scripts/test-compose.sh runs the stack itself)."""

from __future__ import annotations

import re
from pathlib import Path

from internvl_queue.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# REDIS_URL is always the stack's own Redis; INTERNVL_GPU_INDEX is set by `worker --gpus` itself.
NOT_FROM_ENV_FILE = {"REDIS_URL", "INTERNVL_GPU_INDEX"}


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


def test_only_the_api_port_is_published() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    assert re.findall(r"^    ports:\n((?:      - .*\n)+)", compose, re.MULTILINE) == [
        '      - "${INTERNVL_API_PORT:-8000}:8000"\n'
    ]
    assert "expose:" not in compose
