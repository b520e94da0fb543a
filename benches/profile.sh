#!/usr/bin/env bash
# Profile one load shape: a release gateway on Redis (scripts/services.sh),
# `loadtest` with the given arguments, and `perf record` of the gateway (or
# of the whole box with PERF_TARGET=-a) for PERF_SECS seconds once every
# member has joined. Prints the gateway's CPU over the run, the loadtest's
# figures, and perf's top symbols.
#
#   bash benches/profile.sh --connections 1000 --rooms 1 --senders 4 --rate 300 --duration 10s
#
# GATEWAY=path runs another gateway binary (a before/after pair in one
# sitting); GATEWAY_CPUS / LOADTEST_CPUS pin them with taskset; PERF_SECS=0
# skips perf. Load goes to loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
cargo build -q --release -p gateway -p loadtest
T=${CARGO_TARGET_DIR:-target}/release
GATEWAY=${GATEWAY:-$T/gateway}
PERF_SECS=${PERF_SECS:-5}
OUT=${OUT:-$(mktemp -d)}
start_redis

log=$OUT/gateway.log
${GATEWAY_CPUS:+taskset -c "$GATEWAY_CPUS"} "$GATEWAY" --listen 127.0.0.1:0 --log-format json \
    --data-dir "$OUT/data" "${UNLIMITED[@]}" --log warn,gateway=info >"$log" 2>&1 &
gw=$!
pids+=("$gw")
addr=$(gateway_addr "$log")

${LOADTEST_CPUS:+taskset -c "$LOADTEST_CPUS"} "$T/loadtest" --url "ws://$addr/ws" --quiet --source-ips 50 \
    --ready-file "$OUT/ready" --report "$OUT/report.json" "$@" >/dev/null &
lt=$!
while [ ! -s "$OUT/ready" ] && kill -0 "$lt" 2>/dev/null; do sleep 0.05; done
ticks() { awk '{print $14 + $15}' "/proc/$gw/stat"; }
c0=$(ticks); t0=$(date +%s.%N)
if [ "$PERF_SECS" != 0 ]; then
    perf record -F 1999 -o "$OUT/perf.data" ${PERF_TARGET:--p $gw} -- sleep "$PERF_SECS" >/dev/null 2>&1
fi
wait "$lt"
c1=$(ticks)
python3 - "$OUT/report.json" "$c0" "$c1" "$t0" "$(getconf CLK_TCK)" <<'PY'
import json, sys, time
r = json.load(open(sys.argv[1])); d, a = r["latency_ms"]["delivery"], r["latency_ms"]["ack"]
secs = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[5])
print(f"delivered={r['delivered']} deliveries/s={r['deliveries_per_second']:.0f} loss={r['loss']} "
      f"delivery_p50={d['p50']}ms p99={d['p99']}ms ack_p50={a['p50']}ms ack_p99={a['p99']}ms "
      f"gateway_cores={secs / (time.time() - float(sys.argv[4])):.3f} "
      f"gateway_us_per_delivery={secs * 1e6 / max(r['delivered'], 1):.2f}")
PY
if [ "$PERF_SECS" != 0 ]; then
    perf report -i "$OUT/perf.data" --no-children --sort dso 2>/dev/null | grep -v '^#' | grep -v '^$' | head -6
    perf report -i "$OUT/perf.data" --no-children --sort sym 2>/dev/null | grep -v '^#' | grep -v '^$' | head -30
fi
echo "perf data and report: $OUT"
