#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with this project installed, and redis-server
# (installed from the OS packages if the machine has none). Safe to run again.
#   scripts/setup.sh          the service (API, webhook worker, GPU worker: the `worker` extra)
#   scripts/setup.sh test     the service plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$python" -m venv .venv
fi
extras="[worker]"
[ "${1:-}" = "test" ] && extras="[worker,test]"
# Skip pip when nothing changed since the last install (pip's resolver alone takes seconds).
stamp=".venv/.installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing internvl-queue${extras} into .venv"
    .venv/bin/python -m pip install -qq --upgrade pip
    .venv/bin/python -m pip install -qq -e ".${extras}"
    touch "$stamp"
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "setup: redis-server not found; installing it"
    if command -v apt-get >/dev/null 2>&1; then
        sudo_cmd=""
        [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        $sudo_cmd apt-get update -qq
        $sudo_cmd apt-get install -y -qq redis-server >/dev/null
    elif command -v brew >/dev/null 2>&1; then
        brew install redis
    else
        echo "setup: please install redis-server, or set REDIS_URL to a Redis you run" >&2
        exit 1
    fi
fi

# The web page's browser test drives Debian's Chromium (playwright comes with the test extra).
if [ "${1:-}" = "test" ] && ! command -v chromium >/dev/null 2>&1 \
        && ! command -v chromium-browser >/dev/null 2>&1; then
    echo "setup: chromium not found; installing it (for tests/api/test_web_page.py)"
    if command -v apt-get >/dev/null 2>&1; then
        sudo_cmd=""
        [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        $sudo_cmd apt-get update -qq
        $sudo_cmd apt-get install -y -qq chromium >/dev/null
    else
        echo "setup: please install Chromium (the web page test drives it)" >&2
        exit 1
    fi
fi
