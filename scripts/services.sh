#!/usr/bin/env bash
# Real services for development, benchmarks and CI, on free loopback ports.
#
#   scripts/services.sh up redis           one Redis (appendonly, fsync always)
#   scripts/services.sh up redis-cluster   a three-master Redis Cluster
#   scripts/services.sh down               stop everything this script started
#   scripts/services.sh env                print the environment lines again
#
# `up` waits until the service answers, then prints the environment lines a
# gateway node needs (GATEWAY_REDIS_URL=..., GATEWAY_REDIS_CLUSTER_NODES=...),
# e.g. `eval "$(scripts/services.sh up redis)"`. State lives in
# $SERVICES_DIR (default /tmp/chat-gateway-services).
set -euo pipefail
STATE=${SERVICES_DIR:-/tmp/chat-gateway-services}
mkdir -p "$STATE"

die() { echo "services: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 not found (apt-get install redis-server redis-tools)"; }

free_port() {
    # A free port whose cluster bus port (+10000) is free too.
    python3 - <<'PY'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p >= 55000: s.close(); continue
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p + 10000)); print(p); break
    except OSError:
        pass
    finally:
        s.close(); t.close()
PY
}

wait_for() {  # port
    for _ in $(seq 1 200); do
        [ "$(redis-cli -p "$1" ping 2>/dev/null || true)" = PONG ] && return 0
        sleep 0.05
    done
    die "redis on port $1 did not answer"
}

start_redis() {  # port dir [extra args...]
    local port=$1 dir=$2; shift 2
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
        --appendonly yes --appendfsync always --save "" "$@" >/dev/null
    wait_for "$port"
    echo "$dir/redis.pid" >>"$STATE/pids"
}

case "${1:-}" in
up)
    need redis-server; need redis-cli
    case "${2:-}" in
    redis)
        port=$(free_port)
        start_redis "$port" "$STATE/redis-$port"
        echo "GATEWAY_REDIS_URL=redis://127.0.0.1:$port" >>"$STATE/env"
        echo "GATEWAY_REDIS_URL=redis://127.0.0.1:$port"
        ;;
    redis-cluster)
        ports=()
        for _ in 1 2 3; do
            port=$(free_port)
            start_redis "$port" "$STATE/cluster-$port" --cluster-enabled yes \
                --cluster-config-file nodes.conf --cluster-node-timeout 2000
            ports+=("$port")
        done
        redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") \
            --cluster-replicas 0 --cluster-yes >"$STATE/cluster-create.log" 2>&1 \
            || die "redis-cli --cluster create failed: see $STATE/cluster-create.log"
        for port in "${ports[@]}"; do
            for _ in $(seq 1 200); do
                redis-cli -p "$port" cluster info 2>/dev/null | grep -q cluster_state:ok && break
                sleep 0.05
            done
            redis-cli -p "$port" cluster info | grep -q cluster_state:ok || die "cluster not ok on $port"
        done
        line="GATEWAY_REDIS_CLUSTER_NODES=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}" | sed 's/,$//')"
        echo "$line" >>"$STATE/env"
        echo "$line"
        ;;
    *) die "usage: $0 up redis|redis-cluster" ;;
    esac
    ;;
down)
    pids=()
    if [ -f "$STATE/pids" ]; then
        while read -r pidfile; do
            [ -f "$pidfile" ] && pids+=("$(cat "$pidfile")")
        done <"$STATE/pids"
    fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$STATE"
    ;;
env)
    cat "$STATE/env" 2>/dev/null || true
    ;;
*)
    die "usage: $0 up redis|redis-cluster | down | env"
    ;;
esac
