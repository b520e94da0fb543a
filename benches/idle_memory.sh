#!/usr/bin/env bash
# Gateway resident memory per idle, authenticated connection (each joined to
# one of ROOMS rooms). Starts PROCS release gateway processes (single-node
# embedded defaults, each on a free loopback port), measures their RSS,
# holds CONNECTIONS/PROCS connections on each with `loadtest --scenario idle
# --workers PROCS` (one process holds at most `ulimit -Hn` sockets; worker w
# takes every PROCS-th connection, so each worker loads one gateway),
# waits until every node counts its connections, and measures again.
#   bash benches/idle_memory.sh [connections] [rooms] [procs]
set -euo pipefail
N=${1:-10000}
ROOMS=${2:-100}
PROCS=${3:-1}
PER=$(( N / PROCS ))
cd "$(dirname "$0")/.."
. benches/lib.sh
cargo build -q --release -p gateway -p loadtest
TARGET=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
gws=() cls=() addrs=()
cleanup() { kill "${gws[@]}" "${cls[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

for p in $(seq 1 "$PROCS"); do
    "$TARGET/gateway" --listen 127.0.0.1:0 --data-dir "$work/data$p" --log-format json \
        --request-burst 1000000 >"$work/gw$p.log" 2>&1 &
        gws+=($!)
    addrs+=("$(gateway_addr "$work/gw$p.log")")
done

rss_total() { local t=0; for g in "${gws[@]}"; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$g/status"))); done; echo $t; }
tcp_pages() { awk '/^TCP:/ {for (i=1;i<=NF;i++) if ($i=="mem") print $(i+1)}' /proc/net/sockstat; }
active() { curl -s "http://$1/metrics" | awk '/^gateway_connections_active / {print int($2)}'; }
base=$(rss_total); base_tcp=$(tcp_pages)

urls=()
for a in "${addrs[@]}"; do urls+=(--url "ws://$a/ws"); done
"$TARGET/loadtest" "${urls[@]}" --workers "$PROCS" --scenario idle --connections "$(( PER * PROCS ))" \
    --rooms "$ROOMS" --duration 1h --source-ips 50 --ramp $(( 3000 * PROCS )) --room-prefix idle --quiet \
    >"$work/lt.json" 2>"$work/lt.err" &
cls+=($!)
started=$(date +%s)
for a in "${addrs[@]}"; do
    for _ in $(seq 1 3000); do
        [ "$(active "$a" || echo 0)" = "$PER" ] && break
        sleep 0.1
    done
    [ "$(active "$a")" = "$PER" ] || { echo "only $(active "$a") of $PER connected on $a"; cat "$work/lt.err"; exit 1; }
done
loaded=$(rss_total); loaded_tcp=$(tcp_pages)

total=$(( PER * PROCS ))
per_conn=$(( (loaded - base) * 1024 / total ))
page=$(getconf PAGESIZE)
kernel_per_socket=$(( (loaded_tcp - base_tcp) * page / (2 * total) ))
echo "connections=$total rooms=$ROOMS gateway_processes=$PROCS ($PER each) ramp_seconds=$(( $(date +%s) - started ))"
echo "gateway_rss_kib_before=$base gateway_rss_kib_after=$loaded (all gateway processes)"
echo "gateway_rss_bytes_per_connection=$per_conn"
echo "kernel_tcp_bytes_per_socket≈$kernel_per_socket (sockstat TCP mem, client and server sockets averaged)"
