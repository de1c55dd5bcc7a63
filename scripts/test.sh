#!/usr/bin/env bash
# One command for a fresh machine: set up, lint, type-check, run the whole test suite (offline).
# The tests use the Redis on 127.0.0.1:6379 (DB 13, flushed) if one answers, else start their own.
# Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
