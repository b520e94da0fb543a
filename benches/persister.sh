#!/usr/bin/env bash
# History in the CQL server (issue 4), on Redis + Cassandra started by
# scripts/services.sh and release gateway/dispatcher/loadtest binaries:
# 1. persister lag under a steady send rate (persister inside the node),
# 2. persister throughput into the CQL server: a backlog published with no
#    persister running, then drained by one standalone dispatcher,
# 3. history read latency for the newest page and a deep page.
#   RATE=2000 SECS=15 BACKLOG=100000 bash benches/persister.sh
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
RATE=${RATE:-2000}
SECS=${SECS:-15}
BACKLOG=${BACKLOG:-100000}
cd "$(dirname "$0")/.."
. benches/lib.sh
cargo build -q --release -p gateway -p loadtest -p dispatcher
T=${CARGO_TARGET_DIR:-target}/release
OUT=${OUT:-$(mktemp -d)}
export SERVICES_DIR=$OUT/services
pids=()
cleanup() {
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "failed ($rc); last service log lines:" >&2
        tail -n 5 "$SERVICES_DIR"/*/cassandra.log "$OUT"/*.log 2>/dev/null >&2 || true
    fi
    kill "${pids[@]}" 2>/dev/null || true
    scripts/services.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
eval "$(scripts/services.sh up redis)"
eval "$(scripts/services.sh up cassandra)"
REDIS=$GATEWAY_REDIS_URL CQL=$GATEWAY_SCYLLA_NODES
unset GATEWAY_REDIS_URL GATEWAY_SCYLLA_NODES
rport=${REDIS##*:}

start_node() {  # name keyspace [flags...]; sets ADDR
    local name=$1 ks=$2; shift 2
    "$T/gateway" --listen 127.0.0.1:0 --log-format json --data-dir "$OUT/$name" --redis-url "$REDIS" \
        --scylla-nodes "$CQL" --scylla-keyspace "$ks" --api-key bench --stream-trim-interval 1s \
        --send-rate 1000000 --send-burst 1000000 --request-rate 1000000 --request-burst 1000000 \
        --redis-prefix "$name" --log warn,gateway=info "$@" >"$OUT/$name.log" 2>&1 &
        pids+=($!)
    ADDR=$(gateway_addr "$OUT/$name.log" 400)
}
metric() { curl -s "http://$1/metrics" | awk -v n="$2" '$1==n {print $2}'; }
# Entries of prefix $1's streams not yet stored: lag + pending of the group.
unstored() {
    local total=0
    for s in $(seq 0 15); do
        local n
                # (a stream not created yet is an error reply: counts as 0)
        n=$({ redis-cli -p "$rport" XINFO GROUPS "$1:{s$s}" 2>/dev/null || true; } \
            | awk 'prev=="pending" || prev=="lag" {sum += $1} {prev=$1} END {print sum+0}')
        total=$((total + n))
    done
    echo "$total"
}

echo "== 1. lag at a steady $RATE msg/s for ${SECS}s (persister in the node)"
start_node steady bench_steady
A=$ADDR
"$T/loadtest" --url "ws://$A/ws" --quiet --connections 20 --rooms 20 --senders 10 --rate "$RATE" \
    --duration "${SECS}s" --report "$OUT/steady.json" >/dev/null &
lt=$!
max=0 sum=0 n=0
while kill -0 $lt 2>/dev/null; do
    u=$(unstored steady)
    [ "$u" -gt "$max" ] && max=$u
    sum=$((sum + u)); n=$((n + 1))
    sleep 0.5
done
echo "steady: rate=$RATE unstored_max=$max unstored_mean=$((sum / (n > 0 ? n : 1))) (entries; sampled every 0.5 s)"

echo "== 2. throughput: $BACKLOG backlog entries drained by one dispatcher"
start_node backlog bench_backlog --persister false
B=$ADDR
"$T/loadtest" --url "ws://$B/ws" --quiet --connections 20 --rooms 20 --senders 40 --rate 40000 \
    --duration "$(( BACKLOG / 40000 + 1 ))s" --report "$OUT/backlog.json" >/dev/null
published=$(python3 -c "import json;print(json.load(open('$OUT/backlog.json'))['acked'])")
start=$(date +%s.%N)
GATEWAY_SCYLLA_NODES=$CQL "$T/dispatcher" --redis-url "$REDIS" --redis-prefix backlog \
    --scylla-keyspace bench_backlog --consumer bench >"$OUT/dispatcher.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 2400); do
    groups=$(redis-cli -p "$rport" XINFO GROUPS "backlog:{s0}" 2>/dev/null | grep -c persister || true)
    [ "$groups" -gt 0 ] && [ "$(unstored backlog)" = 0 ] && break
    sleep 0.25
done
end=$(date +%s.%N)
python3 -c "p=$published; t=$end-$start; print(f'throughput: {p} entries stored in {t:.1f} s = {p/t:.0f} msg/s (batch 512, wait 50ms, one dispatcher, 16 shards)')"

echo "== 3. history reads (room lt-0: $(( published / 20 )) messages)"
deep=$(curl -s -H "authorization: Bearer bench" "http://$B/api/rooms/lt-0/messages?after=0&limit=100" \
    | python3 -c "import json,sys; print(json.load(sys.stdin)['messages'][-1]['msg'])")
for page in newest deep; do
    extra=()
    [ "$page" = deep ] && extra=(--history-before "$deep")
    "$T/loadtest" --url "ws://$B/ws" --quiet --scenario history --connections 1 --rooms 1 --senders 4 \
        --history-room lt-0 --history-limit 50 --duration 8s "${extra[@]}" --report "$OUT/history-$page.json" >/dev/null
    python3 - "$OUT/history-$page.json" "$page" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); h = r["latency_ms"]["history"]
print(f"history {sys.argv[2]} page (50 messages): {h['count']} reads, p50={h['p50']:.2f} ms p99={h['p99']:.2f} ms max={h['max']:.2f} ms")
PY
done
echo "reports: $OUT"
