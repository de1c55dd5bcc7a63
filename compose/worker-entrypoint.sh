#!/usr/bin/env bash
# The GPU worker container's start: `internvl-queue-worker [ARGS...]`
#   1. its output also goes to $INTERNVL_LOG_DIR/worker-<container>.log (the logs volume);
#   2. the start-up check, `internvl-queue doctor` (GPU, CUDA, Redis, model, disk), when this
#      version has it: a worker that could not serve stops here, saying why;
#   3. `internvl-queue worker ARGS...` replaces this shell, so that `docker stop`'s SIGTERM
#      reaches it directly: a warm shutdown (batches in flight finish, their results are stored).
set -euo pipefail

if [ -n "${INTERNVL_LOG_DIR:-}" ] && [ -d "$INTERNVL_LOG_DIR" ] && [ -w "$INTERNVL_LOG_DIR" ]; then
    log="$INTERNVL_LOG_DIR/worker-$HOSTNAME.log"
    exec > >(tee -a "$log") 2>&1
    echo "internvl-queue-worker: $(date -u +%FT%TZ) starting; log: $log"
fi

if [ "${INTERNVL_SKIP_DOCTOR:-0}" != 1 ] && internvl-queue doctor --help >/dev/null 2>&1; then
    if ! internvl-queue doctor; then
        echo "internvl-queue-worker: the start-up check above failed: fix what it names" \
            "(or set INTERNVL_SKIP_DOCTOR=1 to start anyway)" >&2
        exit 1
    fi
fi

exec internvl-queue worker "$@"
