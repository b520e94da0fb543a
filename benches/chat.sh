#!/usr/bin/env bash
# The loadtest `chat` scenario (protocol 1.1: sends mixed with edits,
# reactions and read markers) on one embedded node, then on three nodes
# over Redis and Cassandra (started by scripts/services.sh), release
# binaries, loopback only. Prints each run's rates, loss, duplicates and
# per-op acknowledgement latency.
#   RATE=1000 SECS=10 bash benches/chat.sh
set -euo pipefail
RATE=${RATE:-1000}
SECS=${SECS:-10}
SHAPE=(--scenario chat --connections 1000 --rooms 50 --senders 50 --rate "$RATE" --duration "${SECS}s" --max-loss 0)
cd "$(dirname "$0")/.."
. benches/lib.sh
cargo build -q --release -p gateway -p loadtest
T=${CARGO_TARGET_DIR:-target}/release
OUT=${OUT:-$(mktemp -d)}
export SERVICES_DIR=$OUT/services
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; scripts/services.sh down >/dev/null 2>&1 || true' EXIT

# start NAME [flags...]: a release node; sets ADDR.
start() {
    local name=$1
    shift
    "$T/gateway" --listen 127.0.0.1:0 --log-format json --data-dir "$OUT/$name" --log warn,gateway=info \
        "$@" >"$OUT/$name.log" 2>&1 &
    pids+=($!)
    ADDR=$(gateway_addr "$OUT/$name.log" 400)
}

# run LABEL URL...: the chat shape against the URLs; one summary line.
run() {
    local label=$1
    shift
    local urls=()
    for a in "$@"; do urls+=(--url "ws://$a/ws"); done
    "$T/loadtest" "${urls[@]}" "${SHAPE[@]}" --quiet --report "$OUT/$label.json" >/dev/null 2>"$OUT/$label.err" ||
        { echo "$label: loadtest failed:"; cat "$OUT/$label.err" "$OUT/$label.json" 2>/dev/null | tail -20; exit 1; }
    python3 - "$OUT/$label.json" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]
ops = " ".join(f"{k} p50 {l[k]['p50']:.2f} p99 {l[k]['p99']:.2f}" for k in ("ack", "ack_edit", "ack_react", "ack_read"))
print(f"{sys.argv[2]:<24} {r['acks_per_second']:7.0f} stored/s, {r['deliveries_per_second']:8.0f} deliveries/s, "
      f"loss {r['loss']}, duplicates {r['duplicates']}, without entry {r['acked_without_entry']}, "
      f"delivery p50 {l['delivery']['p50']:.2f} p99 {l['delivery']['p99']:.2f} ms | {ops} (ms)")
PY
}

echo "machine: $(nproc) cores; ${RATE} requests/s for ${SECS}s: 1000 members in 50 rooms, 50 senders"
start one
run "one node (embedded)" "$ADDR"

eval "$(scripts/services.sh up redis)"
eval "$(scripts/services.sh up cassandra)"
REDIS=$GATEWAY_REDIS_URL CQL=$GATEWAY_SCYLLA_NODES
unset GATEWAY_REDIS_URL GATEWAY_SCYLLA_NODES
addrs=()
for n in 1 2 3; do
    start "node$n" --redis-url "$REDIS" --scylla-nodes "$CQL" --scylla-keyspace bench_chat
    addrs+=("$ADDR")
done
run "three nodes, Redis+CQL" "${addrs[@]}"
