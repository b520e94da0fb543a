#!/usr/bin/env bash
# A well-behaved client's latency while the node is under attack (issue 10):
# one release gateway node (embedded defaults but a per-IP connection rate
# of 20/s, pinned to CPU 0), a probe
# (`loadtest` fan-out: 20 members in 2 rooms, 2 senders at 40 msg/s in all,
# pinned to CPU 1) measured for SECONDS alone, then for SECONDS while each
# attack of benches/abuse_attacks.py runs (from 127.0.0.200) (pinned to CPU 1 too, at nice 19
# so the probe is not starved on its own core), a fresh baseline before
# each. Prints send-to-ack and send-to-delivery p50/p99 and each attack's
# p99 over its baseline, the node's peak RSS and its CPU (share of its
# core) during each phase.
#   bash benches/abuse.sh [seconds] [attacks, default "flood nonreader stalled storm"]
set -euo pipefail
SECONDS_PER_PHASE=${1:-10}
ATTACKS=${2:-flood nonreader stalled storm}
cd "$(dirname "$0")/.."
. benches/lib.sh
cargo build -q --release -p gateway -p loadtest
TARGET=${CARGO_TARGET_DIR:-target}/release
OUT=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$OUT"' EXIT

taskset -c 0 "$TARGET/gateway" --listen 127.0.0.1:0 --data-dir "$OUT/data" --log-format json \
    --api-key bench-key --connection-rate-per-ip 20 >"$OUT/gw.log" 2>&1 &
gw=$!
pids+=("$gw")
addr=$(gateway_addr "$OUT/gw.log")

# The room the non-readers ask for: 500 messages of 30 KB (15 MB of history).
python3 - "$addr" <<'PY'
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], timeout=10)
body = json.dumps({"body": {"text": "y" * 30000}})
for _ in range(500):
    c.request("POST", "/api/rooms/big/messages", body,
              {"Authorization": "Bearer bench-key", "Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$gw/status"; }
# peak_rss FILE: samples the node's RSS every 100 ms into FILE until killed.
peak_rss() { while :; do rss_kib >>"$1"; sleep 0.1; done; }

# cpu_ticks: the node's user+system CPU so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$gw/stat"; }

# probe NAME: the well-behaved client for one phase; prints its line.
probe() {
    local name=$1
    : >"$OUT/rss-$name"
    peak_rss "$OUT/rss-$name" &
    local sampler=$!
    local ticks0
    ticks0=$(cpu_ticks)
    local started
    started=$(date +%s.%N)
    taskset -c 1 "$TARGET/loadtest" --url "ws://$addr/ws" --connections 20 --rooms 2 --senders 2 \
        --rate 40 --duration "${SECONDS_PER_PHASE}s" --drain 2s --room-prefix "probe-$name" --quiet \
        --report "$OUT/$name.json" >/dev/null 2>"$OUT/$name.err" || { cat "$OUT/$name.err"; exit 1; }
    kill "$sampler" 2>/dev/null || true
    # The node's CPU over the phase, as a share of its one core: what the
    # attack costs it, steadier than a few-millisecond p99.
    local cpu
    cpu=$(python3 -c "import sys; t, s = int(sys.argv[1]), float(sys.argv[2]); print(f'{t / float(sys.argv[3]) / s * 100:.1f}')" \
        "$(( $(cpu_ticks) - ticks0 ))" "$(python3 -c "import time,sys; print(time.time() - float(sys.argv[1]))" "$started")" "$(getconf CLK_TCK)")
    echo "$cpu" >"$OUT/cpu-$name"
    python3 - "$OUT/$name.json" "$name" "$(sort -n "$OUT/rss-$name" | tail -1)" "$cpu" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
a, d = r["latency_ms"]["ack"], r["latency_ms"]["delivery"]
print(f"{sys.argv[2]:<18} ack p50 {a['p50']:6.2f} p99 {a['p99']:6.2f} ms | delivery p50 {d['p50']:6.2f} p99 {d['p99']:6.2f} ms"
      f" | delivered {r['delivered']}/{r['expected_deliveries']} | node peak RSS {int(sys.argv[3]) // 1024} MiB | node CPU {sys.argv[4]}%")
PY
}

p99() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['latency_ms'][sys.argv[2]]['p99'])" "$OUT/$1.json" "$2"; }

echo "machine: $(nproc) cores, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo | xargs); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "node on CPU 0; probe and attackers on CPU 1 (attackers at nice 19); ${SECONDS_PER_PHASE}s per phase"
summary=()
for attack in $ATTACKS; do
    probe "base-$attack"
    # The attacker starts first and runs a little longer than the probe.
    taskset -c 1 nice -n 19 python3 benches/abuse_attacks.py "$attack" "$addr" $((SECONDS_PER_PHASE + 4)) --source 127.0.0.200 \
        >"$OUT/attack-$attack.json" 2>"$OUT/attack-$attack.err" &
    attacker=$!
    pids+=("$attacker")
    sleep 2
    probe "$attack"
    wait "$attacker" || true
    echo "  attacker: $(cat "$OUT/attack-$attack.json")"
    summary+=("$(printf '%-10s node CPU %5s%% -> %5s%% of a core' "$attack" "$(cat "$OUT/cpu-base-$attack")" "$(cat "$OUT/cpu-$attack")")")
    for kind in ack delivery; do
        summary+=("$(python3 -c "import sys; b, a = float(sys.argv[3]), float(sys.argv[4]); print(f'{sys.argv[1]:<10} {sys.argv[2]:<8} p99 {b:6.2f} -> {a:6.2f} ms: x{a / b:.2f}')" \
            "$attack" "$kind" "$(p99 "base-$attack" "$kind")" "$(p99 "$attack" "$kind")")")
    done
done
echo "-- p99 under attack over its baseline"
printf '%s\n' "${summary[@]}"
curl -s "http://$addr/metrics" | grep -E '^gateway_(connections_(refused|closed)_total|slow_consumer)' | sort || true
