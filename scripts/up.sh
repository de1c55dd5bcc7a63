#!/usr/bin/env bash
# One command for a fresh machine: set up, then run Redis + a GPU worker + the API.
# Arguments go to `internvl-queue up` (e.g. --host 0.0.0.0 --port 8000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/internvl-queue up "$@"
