#!/bin/sh
# A sentinel of compose/sentinel.yml. Its configuration is written once, into its volume: the
# sentinel rewrites it (the current primary, the epoch, the other sentinels), and a restarted
# sentinel must start from what it learnt, not from the first primary.
# The defaults are compose's; tests/test_compose_sentinel_scripts.py runs it on loopback ports.
set -eu
dir="${SENTINEL_DIR:-/data}"
conf="$dir/sentinel.conf"
first="${FIRST_PRIMARY:-redis:6379}"
name="$REDIS_MASTER_NAME"
if [ ! -f "$conf" ]; then
    cat > "$conf" <<CONF
port ${SENTINEL_PORT:-26379}
dir $dir
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel monitor $name ${first%:*} ${first##*:} 2
sentinel down-after-milliseconds $name ${SENTINEL_DOWN_AFTER_MS:-5000}
sentinel failover-timeout $name 60000
sentinel parallel-syncs $name 1
CONF
fi
exec redis-server "$conf" --sentinel
