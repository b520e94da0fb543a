#!/usr/bin/env bash
# Gateway resident memory per idle, authenticated connection (each joined to
# one of ROOMS rooms). Starts a release gateway on a free loopback port,
# measures its RSS, holds N connections with `loadtest --scenario idle`,
# waits until the node counts them all, and measures again.
#   bash benches/idle_memory.sh [connections] [rooms]
set -euo pipefail
N=${1:-10000}
ROOMS=${2:-100}
cd "$(dirname "$0")/.."
cargo build -q --release -p gateway -p loadtest
TARGET=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
cleanup() { kill "${gw:-}" "${cl:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$TARGET/gateway" --listen 127.0.0.1:0 --data-dir "$work/data" --log-format json \
    --request-burst 1000000 >"$work/gw.log" 2>&1 &
gw=$!
for _ in $(seq 1 200); do
    addr=$(grep -o '"addr":"[0-9.:]*"' "$work/gw.log" | head -1 | cut -d'"' -f4 || true)
    [ -n "$addr" ] && break
    sleep 0.05
done
[ -n "$addr" ] || { echo "gateway did not start"; cat "$work/gw.log"; exit 1; }

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
tcp_pages() { awk '/^TCP:/ {for (i=1;i<=NF;i++) if ($i=="mem") print $(i+1)}' /proc/net/sockstat; }
active() { curl -s "http://$addr/metrics" | awk '/^gateway_connections_active / {print int($2)}'; }
base=$(rss $gw); base_tcp=$(tcp_pages)

"$TARGET/loadtest" --url "ws://$addr/ws" --scenario idle --connections "$N" --rooms "$ROOMS" \
    --duration 1h --source-ips 50 --quiet >"$work/lt.json" 2>"$work/lt.err" &
cl=$!
for _ in $(seq 1 1200); do
    [ "$(active || echo 0)" = "$N" ] && break
    kill -0 $cl 2>/dev/null || { cat "$work/lt.err"; exit 1; }
    sleep 0.1
done
[ "$(active)" = "$N" ] || { echo "only $(active) of $N connected"; exit 1; }
loaded=$(rss $gw); loaded_tcp=$(tcp_pages)

per_conn=$(( (loaded - base) * 1024 / N ))
page=$(getconf PAGESIZE)
kernel_per_socket=$(( (loaded_tcp - base_tcp) * page / (2 * N) ))
echo "connections=$N rooms=$ROOMS"
echo "gateway_rss_kib_before=$base gateway_rss_kib_after=$loaded"
echo "gateway_rss_bytes_per_connection=$per_conn"
echo "kernel_tcp_bytes_per_socket≈$kernel_per_socket (sockstat TCP mem, client and server sockets averaged)"
