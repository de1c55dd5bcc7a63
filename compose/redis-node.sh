#!/bin/sh
# A Redis node of compose/sentinel.yml: the primary if the sentinels name this node (or, at the
# very first start, when no sentinel answers yet, if it is `redis`), else a replica of the node
# they name. So a node that comes back after a failover starts as the new primary's replica
# rather than as a second primary with old data (the sentinels would demote it, but clients
# could reach it meanwhile). It announces its service name, so that the sentinels hand out
# names that outlive a container's address.
set -eu
node="$REDIS_NODE"
primary=""
for sentinel in sentinel-1 sentinel-2 sentinel-3; do
    primary=$(redis-cli -h "$sentinel" -p 26379 -t 2 --raw \
        sentinel get-master-addr-by-name "$REDIS_MASTER_NAME" 2>/dev/null | head -n 1) || true
    [ -n "$primary" ] && break
done
[ -n "$primary" ] || primary=redis
set -- /usr/local/etc/redis/redis.conf --replica-announce-ip "$node"
if [ "$primary" != "$node" ]; then
    set -- "$@" --replicaof "$primary" 6379
fi
echo "redis-node: $node starts as $( [ "$primary" = "$node" ] && echo primary || echo "replica of $primary")"
# The image's entrypoint runs redis-server as the redis user, owning /data.
exec /usr/local/bin/docker-entrypoint.sh redis-server "$@"
