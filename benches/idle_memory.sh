#!/usr/bin/env bash
# Gateway resident memory per idle, authenticated connection (each in one
# room). Starts a release gateway on a free loopback port, measures its RSS,
# opens N connections from another process, measures again.
#   bash benches/idle_memory.sh [connections] [rooms]
set -euo pipefail
N=${1:-10000}
ROOMS=${2:-100}
cd "$(dirname "$0")/.."
cargo build -q --release -p gateway --bin gateway --example idle_clients
TARGET=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
cleanup() { kill "${gw:-}" "${cl:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$TARGET/gateway" --listen 127.0.0.1:0 --data-dir "$work/data" --log-format json >"$work/gw.log" 2>&1 &
gw=$!
for _ in $(seq 1 200); do
    addr=$(grep -o '"addr":"[0-9.:]*"' "$work/gw.log" | head -1 | cut -d'"' -f4 || true)
    [ -n "$addr" ] && break
    sleep 0.05
done
[ -n "$addr" ] || { echo "gateway did not start"; cat "$work/gw.log"; exit 1; }

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
tcp_pages() { awk '/^TCP:/ {for (i=1;i<=NF;i++) if ($i=="mem") print $(i+1)}' /proc/net/sockstat; }
base=$(rss $gw); base_tcp=$(tcp_pages)

mkfifo "$work/hold"
"$TARGET/examples/idle_clients" "ws://$addr/ws" "$N" "$ROOMS" <"$work/hold" >"$work/cl.out" &
cl=$!
exec 3>"$work/hold"
for _ in $(seq 1 1200); do
    grep -q '^ready' "$work/cl.out" 2>/dev/null && break
    kill -0 $cl 2>/dev/null || { echo "client failed"; exit 1; }
    sleep 0.1
done
grep -q '^ready' "$work/cl.out" || { echo "clients not ready"; exit 1; }
loaded=$(rss $gw); loaded_tcp=$(tcp_pages)
exec 3>&-

per_conn=$(( (loaded - base) * 1024 / N ))
page=$(getconf PAGESIZE)
kernel_per_socket=$(( (loaded_tcp - base_tcp) * page / (2 * N) ))
echo "connections=$N rooms=$ROOMS"
echo "gateway_rss_kib_before=$base gateway_rss_kib_after=$loaded"
echo "gateway_rss_bytes_per_connection=$per_conn"
echo "kernel_tcp_bytes_per_socket≈$kernel_per_socket (sockstat TCP mem, client and server sockets averaged)"
