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

# Debian packages the tests drive, installed when missing (test mode only).
apt_install() { # PACKAGE WHY
    echo "setup: $1 not found; installing it ($2)"
    if command -v apt-get >/dev/null 2>&1; then
        sudo_cmd=""
        [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        $sudo_cmd apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$1" >/dev/null
    else
        echo "setup: please install $1 ($2)" >&2
        exit 1
    fi
}
if [ "${1:-}" = "test" ]; then
    # The web page's browser test drives Debian's Chromium (playwright comes with the test extra).
    if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
        apt_install chromium "for tests/api/test_web_page.py"
    fi
    # `docker-compose config` checks that the Sentinel override merges (1.29, as CI deploys it).
    if ! command -v docker-compose >/dev/null 2>&1; then
        apt_install docker-compose "for tests/test_compose_files.py"
    fi
fi
