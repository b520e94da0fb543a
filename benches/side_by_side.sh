#!/usr/bin/env bash
# This gateway and Centrifugo, side by side, in one run, under the same
# load from the same `loadtest` (its --protocol centrifugo mode speaks
# Centrifugo's JSON client protocol): idle memory per connection, and
# fan-out rate and latency. Both are single nodes: ours on its embedded
# defaults (every message made durable in redb before its ack), Centrifugo
# with its in-memory engine (nothing persisted).
#
# Centrifugo is not part of this repository. Build it from the Go module
# proxy, e.g.:
#   GOBIN=/opt/centrifugo go install github.com/centrifugal/centrifugo/v6@v6.9.1
# then:
#   CENTRIFUGO=/opt/centrifugo/centrifugo bash benches/side_by_side.sh
set -euo pipefail
CENTRIFUGO=${CENTRIFUGO:?set CENTRIFUGO to a centrifugo binary (see the header)}
IDLE=${IDLE:-10000}
SECS=${SECS:-8}
cd "$(dirname "$0")/.."
cargo build -q --release -p gateway -p loadtest
T=${CARGO_TARGET_DIR:-target}/release
OUT=${OUT:-$(mktemp -d)}
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start() {  # ours|centrifugo -> sets pid, url
    local port; port=$(free_port)
    if [ "$1" = ours ]; then
        "$T/gateway" --listen "127.0.0.1:$port" --data-dir "$OUT/data-$port" --log warn \
            --send-rate 1000000 --send-burst 1000000 --request-rate 1000000 --request-burst 1000000 \
            --outbound-queue 8192 >"$OUT/ours.log" 2>&1 &
        pid=$!
        url="ws://127.0.0.1:$port/ws"
        health="http://127.0.0.1:$port/readyz"
    else
        cat >"$OUT/centrifugo.json" <<JSON
{
  "http_server": { "address": "127.0.0.1", "port": $port },
  "log": { "level": "warn" },
  "engine": { "type": "memory" },
  "client": { "insecure": true, "allow_anonymous_connect_without_token": true },
  "channel": { "without_namespace": {
      "allow_subscribe_for_anonymous": true, "allow_subscribe_for_client": true,
      "allow_publish_for_anonymous": true, "allow_publish_for_subscriber": true,
      "allow_publish_for_client": true, "presence": false, "join_leave": false,
      "history_size": 0, "history_ttl": "0s", "force_recovery": false, "allow_recovery": false } },
  "health": { "enabled": true },
  "usage_stats": { "disabled": true }
}
JSON
        "$CENTRIFUGO" --config "$OUT/centrifugo.json" >"$OUT/centrifugo.log" 2>&1 &
        pid=$!
        url="ws://127.0.0.1:$port/connection/websocket"
        health="http://127.0.0.1:$port/health"
    fi
    for _ in $(seq 1 200); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$health" || true)" = 200 ] && return 0
        sleep 0.05
    done
    echo "$1 did not start"; exit 1
}

proto_of() { [ "$1" = ours ] && echo chat || echo centrifugo; }

idle() {  # target
    start "$1"
    local before; before=$(rss "$pid")
        rm -f "$OUT/ready"
    "$T/loadtest" --protocol "$(proto_of "$1")" --url "$url" --scenario idle --connections "$IDLE" --rooms 100 \
        --duration 30s --source-ips 50 --quiet --ready-file "$OUT/ready" --report "$OUT/idle-$1.json" >/dev/null &
    local lt=$!
    # Measure once every connection is authenticated and in its room.
    for _ in $(seq 1 1200); do
        [ -f "$OUT/ready" ] && break
        sleep 0.1
    done
    [ "$(cat "$OUT/ready" 2>/dev/null)" = "$IDLE" ] || { echo "idle $1: only $(cat "$OUT/ready" 2>/dev/null) connected"; exit 1; }
    sleep 2  # let the server settle after the ramp (a fixed settling time, not a wait for readiness)
    local after; after=$(rss "$pid")
    kill "$lt" 2>/dev/null || true; wait "$lt" 2>/dev/null || true
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    echo "idle $1: connections=$IDLE rss_kib before=$before after=$after bytes_per_connection=$(( (after - before) * 1024 / IDLE ))"
}

fanout() {  # target name loadtest-args...
    local target=$1 name=$2; shift 2
        start "$target"
    rm -f "$OUT/ready"
    "$T/loadtest" --protocol "$(proto_of "$target")" --url "$url" --quiet --duration "${SECS}s" --source-ips 20 \
        --ready-file "$OUT/ready" --report "$OUT/$name-$target.json" "$@" >/dev/null &
    local lt=$!
    # Server CPU is counted from the start of sending (after the ramp).
    while [ ! -s "$OUT/ready" ] && kill -0 "$lt" 2>/dev/null; do sleep 0.05; done
    local t0 w0; t0=$(ticks "$pid"); w0=$(date +%s.%N)
    wait "$lt" || true
    local used=$(( $(ticks "$pid") - t0 )) wall
    wall=$(python3 -c "import sys, time; print(time.time() - float(sys.argv[1]))" "$w0")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    python3 - "$OUT/$name-$target.json" "$name" "$target" "$used" "$(getconf CLK_TCK)" "$wall" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); d = r["latency_ms"]["delivery"]
# Over the wall time from the end of the ramp to the report.
cores = int(sys.argv[4]) / int(sys.argv[5]) / float(sys.argv[6])
print(f"{sys.argv[2]} {sys.argv[3]}: acked/s={r['acks_per_second']:.0f} deliveries/s={r['deliveries_per_second']:.0f} "
      f"loss={r['loss']:.6f} delivery_p50={d['p50']:.2f}ms p99={d['p99']:.2f}ms server_cores={cores:.2f} "
      f"deliveries_per_core_s={r['deliveries_per_second'] / max(cores, 0.01):.0f} closes={r['close_codes']} errors={r['errors']}")
PY
}

for target in ours centrifugo; do idle "$target"; done
[ -n "${IDLE_ONLY:-}" ] && exit 0
for rate in 300 700 1500; do
    for target in ours centrifugo; do
        fanout "$target" "room1000@$rate" --connections 1000 --rooms 1 --senders 4 --rate "$rate"
    done
done
for target in ours centrifugo; do
    fanout "$target" "rooms1000x10@5000" --connections 10000 --rooms 1000 --senders 20 --rate 5000 --ramp 3000
done
echo "reports: $OUT"
