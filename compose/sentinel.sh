#!/bin/sh
# A sentinel of compose/sentinel.yml. Its configuration is written once, into its volume: the
# sentinel rewrites it (the current primary, the epoch, the other sentinels), and a restarted
# sentinel must start from what it learnt, not from the first primary.
set -eu
conf=/data/sentinel.conf
if [ ! -f "$conf" ]; then
    cat > "$conf" <<CONF
port 26379
dir /data
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel monitor $REDIS_MASTER_NAME redis 6379 2
sentinel down-after-milliseconds $REDIS_MASTER_NAME 5000
sentinel failover-timeout $REDIS_MASTER_NAME 60000
sentinel parallel-syncs $REDIS_MASTER_NAME 1
CONF
fi
exec redis-server "$conf" --sentinel
