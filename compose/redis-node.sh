#!/bin/sh
# A Redis node of compose/sentinel.yml: the primary if the sentinels name this node (or, at the
# very first start, when no sentinel answers yet, if it is FIRST_PRIMARY), else a replica of the
# node they name. So a node that comes back after a failover starts as the new primary's replica
# rather than as a second primary with old data (the sentinels would demote it, but a client
# could reach it meanwhile); its data is replaced at its first sync. It announces its name
# (REDIS_NODE), so that the sentinels hand out names that outlive a container's address.
# The defaults are compose's; tests/test_compose_sentinel_scripts.py runs it on loopback ports.
set -eu
node="$REDIS_NODE:${REDIS_PORT:-6379}"
primary=""
for sentinel in ${SENTINELS:-sentinel-1:26379 sentinel-2:26379 sentinel-3:26379}; do
    # "host:port" of the primary, or nothing when this sentinel does not answer.
    primary=$(timeout 3 redis-cli -h "${sentinel%:*}" -p "${sentinel##*:}" --raw \
        sentinel get-master-addr-by-name "$REDIS_MASTER_NAME" 2>/dev/null | paste -sd: -) || true
    [ -n "$primary" ] && break
done
[ -n "$primary" ] || primary="${FIRST_PRIMARY:-redis:6379}"
set -- "${REDIS_CONF:-/usr/local/etc/redis/redis.conf}" \
    --port "${REDIS_PORT:-6379}" --replica-announce-ip "$REDIS_NODE"
if [ "$primary" = "$node" ]; then
    echo "redis-node: $node starts as the primary"
else
    echo "redis-node: $node starts as a replica of $primary"
    set -- "$@" --replicaof "${primary%:*}" "${primary##*:}"
fi
# The official image's entrypoint runs redis-server as the redis user, owning /data; an image
# without it (Debian's redis-server, as scripts/test-compose.sh builds) runs as that user already.
command -v docker-entrypoint.sh >/dev/null && exec docker-entrypoint.sh redis-server "$@"
exec redis-server "$@"
