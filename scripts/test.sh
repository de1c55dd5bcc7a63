#!/usr/bin/env bash
# One command for a fresh machine: set up, lint, type-check, run the whole test suite (offline).
# The tests start their own redis-servers on free ports; a Redis already running is never touched.
# Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
