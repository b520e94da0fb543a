#!/usr/bin/env bash
# Fan-out through Redis Streams: deliveries per second and publish-to-deliver
# latency with NODES gateway processes on one Redis, for the shapes given,
# plus the raw XADD rate redis-benchmark reaches on the same box.
#
#   bash benches/cluster_fanout.sh [nodes] [seconds]
#
# WORKERS=N splits the load generator over N processes (`--workers`): the
# shapes with more connections than one process may open need it
# (rooms10000x10: 100,000 members need 6 workers and 6 nodes here).
#
# Prints one result line per run (and the loadtest JSON reports under
# $OUT, default a temp dir). Load goes to loopback only.
set -euo pipefail
NODES=${1:-1}
SECS=${2:-10}
cd "$(dirname "$0")/.."
. benches/lib.sh
cargo build -q --release -p gateway -p loadtest
T=${CARGO_TARGET_DIR:-target}/release
OUT=${OUT:-$(mktemp -d)}
start_redis
port=${GATEWAY_REDIS_URL##*:}

urls=()
for i in $(seq 1 "$NODES"); do
    log=$OUT/gw$i.log
        "$T/gateway" --listen 127.0.0.1:0 --log-format json --data-dir "$OUT/gw$i" "${UNLIMITED[@]}" \
        --log warn,gateway=info >"$log" 2>&1 &
    pids+=($!)
    urls+=(--url "ws://$(gateway_addr "$log")/ws")
done

cpu_ticks() { local t=0; for p in "${pids[@]}"; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
rss_kib() { local t=0; for p in "${pids[@]}"; do t=$((t + $(awk '/^VmRSS/ {print $2}' /proc/$p/status))); done; echo $t; }

run() {  # name, loadtest args...
        local name=$1; shift
    rm -f "$OUT/$name.ready"
    "$T/loadtest" "${urls[@]}" --quiet --duration "${SECS}s" --source-ips 50 --workers "${WORKERS:-1}" \
        --ready-file "$OUT/$name.ready" --report "$OUT/$name.json" "$@" >/dev/null &
    local lt=$!
    # Gateway CPU is counted from the moment sending starts (after the ramp).
    while [ ! -s "$OUT/$name.ready" ] && kill -0 "$lt" 2>/dev/null; do sleep 0.05; done
    local before t0; before=$(cpu_ticks); t0=$(date +%s.%N)
    wait "$lt"
    local ticks=$(( $(cpu_ticks) - before )) wall
    wall=$(python3 -c "import sys, time; print(time.time() - float(sys.argv[1]))" "$t0")
    python3 - "$OUT/$name.json" "$name" "$NODES" "$ticks" "$(getconf CLK_TCK)" "$(rss_kib)" "$wall" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); name, nodes, ticks, hz, rss = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
d, a = r["latency_ms"]["delivery"], r["latency_ms"]["ack"]
# Over the wall time from the go to the report (sending, drain, shutdown).
cpu = ticks / hz / float(sys.argv[7])
print(f"{name}: nodes={nodes} conns={r['connected']} rooms={r['rooms']} senders={r['senders']} "
      f"sent/s={r['sent']/r['duration_seconds']:.0f} acked/s={r['acks_per_second']:.0f} deliveries/s={r['deliveries_per_second']:.0f} "
      f"loss={r['loss']:.6f} delivery_p50={d['p50']:.2f}ms p99={d['p99']:.2f}ms ack_p50={a['p50']:.2f}ms ack_p99={a['p99']:.2f}ms "
      f"gateway_cpu_cores={cpu:.2f} gateway_rss_mib={rss/1024:.0f}")
PY
}

SHAPES=${SHAPES:-publish room1000 rooms1000x10}
for shape in $SHAPES; do
    case $shape in
    # Publish rate: senders offer more than the node takes; acked/s is the rate.
    publish) run publish --connections 20 --rooms 20 --senders 40 --rate "${PUBLISH_RATE:-60000}" ;;
    # A room of 1,000 members (and 4 senders).
    room1000) run room1000 --connections 1000 --rooms 1 --senders 4 --rate "${ROOM_RATE:-300}" ;;
    # 1,000 rooms of 10 members (and 20 senders, one per 50 rooms).
        rooms1000x10) run rooms1000x10 --connections 10000 --rooms 1000 --senders 20 --rate "${ROOMS_RATE:-10000}" --ramp 3000 ;;
    # A room of 10,000 members (and 4 senders).
    room10000) run room10000 --connections 10000 --rooms 1 --senders 4 --rate "${ROOM10K_RATE:-50}" --ramp 3000 ;;
    # 10,000 rooms of 10 members (and 40 senders, one per 250 rooms).
    rooms10000x10) run rooms10000x10 --connections 100000 --rooms 10000 --senders 40 --rate "${ROOMS_RATE:-5000}" \
        --ramp 3000 --drain 10s ;;
    esac
done


# The same box's raw XADD rate, pipelined like the gateway's connection.
redis-cli -p "$port" del benchstream >/dev/null
echo "redis-benchmark xadd: $(redis-benchmark -p "$port" -q -n 200000 -c 40 -P 16 \
    XADD benchstream MAXLEN '~' 100000 '*' r room f user k m b '{"t":1}' | tr '\r' '\n' | tail -1)"
echo "reports: $OUT"
