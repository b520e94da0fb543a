#!/usr/bin/env bash
# The operations check (CI's `ops` step): the alerting rules, and the
# Grafana dashboards against real metrics.
#
# 1. `promtool check rules` and `promtool test rules` on ops/prometheus/.
# 2. The dashboards' JSON: every panel has a data source and a unit.
# 3. A real Prometheus (Debian's, on a free loopback port, its own data
#    directory, scraping every second, loading ops/prometheus/rules.yml)
#    scrapes two real gateway nodes on Redis and Cassandra (started by
#    scripts/services.sh; a GATEWAY_SCYLLA_NODES already set is used
#    instead) while the load generator runs fan-out with reconnects (joins
#    with since) and history reads, and two bad clients send a bad frame
#    and a refused token. Each node's /metrics then passes `promtool check
#    metrics`, and every query of every dashboard panel must
#    evaluate through Prometheus's HTTP API without error and return data,
#    once for all nodes and once for one node; and the recording rules too.
#
# Everything it starts is stopped on exit; every wait is bounded.
#   bash scripts/ops-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/chat-gateway/target}"

die() { echo "ops-check: $*" >&2; exit 1; }
for tool in promtool prometheus python3 curl; do
    command -v "$tool" >/dev/null || die "$tool not found: run scripts/setup.sh"
done
started=$SECONDS

echo "ops: promtool check rules"
promtool check rules ops/prometheus/rules.yml
echo "ops: promtool test rules"
(cd ops/prometheus && promtool test rules tests.yml)
echo "ops: dashboards render check"
python3 scripts/ops-dashboards.py render grafana/dashboards/*.json

cargo build -q --locked -p gateway -p loadtest
bin="$CARGO_TARGET_DIR/${CARGO_BUILD_TARGET:+$CARGO_BUILD_TARGET/}debug"
WORK=$(mktemp -d)
export SERVICES_DIR="$WORK/services"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    scripts/services.sh down >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it
# succeeds; fails after SECONDS.
wait_until() {
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "waited ${limit}s for $what"
        sleep 0.2
    done
}

eval "export $(scripts/services.sh up redis)"
if [ -z "${GATEWAY_SCYLLA_NODES:-}" ]; then
    eval "export $(scripts/services.sh up cassandra)"
fi
echo "ops: redis $GATEWAY_REDIS_URL, cql $GATEWAY_SCYLLA_NODES ($((SECONDS - started))s)"

# Two nodes, configured by flags alone.
addrs=()
for n in 0 1; do
    log="$WORK/node$n.log"
    env $(compgen -e | grep '^GATEWAY_' | sed 's/^/-u /') \
        "$bin/gateway" --listen 127.0.0.1:0 --log-format json \
        --data-dir "$WORK/node$n" --redis-url "$GATEWAY_REDIS_URL" --scylla-nodes "$GATEWAY_SCYLLA_NODES" \
        --scylla-keyspace "ops_$$" --stream-trim-interval 1s --persister-wait 20ms >"$log" 2>&1 &
    pids+=($!)
    wait_until 30 "node $n to listen" grep -q '"message":"listening"' "$log"
    addr=$(grep -o '"addr":"[0-9.:]*"' "$log" | head -1 | cut -d'"' -f4)
    wait_until 30 "node $n to be ready" curl -fsS "http://$addr/readyz"
    addrs+=("$addr")
done
echo "ops: nodes on ${addrs[*]}"

# Prometheus: its own port and data directory; the rules loaded so they
# are evaluated on real series too.
port=$(free_port)
prom="http://127.0.0.1:$port"
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/ops/prometheus/rules.yml
scrape_configs:
  - job_name: gateway
    static_configs:
      - targets: ["${addrs[0]}", "${addrs[1]}"]
EOF
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus" \
    --web.listen-address="127.0.0.1:$port" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
pids+=($!)
wait_until 30 "prometheus to be ready" curl -fsS "$prom/-/ready"
targets_up() {
    curl -fsS "$prom/api/v1/query?query=sum(up%7Bjob%3D%22gateway%22%7D)" \
        | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; sys.exit(0 if r and float(r[0]["value"][1]) == 2 else 1)'
}
wait_until 30 "prometheus to scrape both nodes" targets_up
echo "ops: prometheus on $prom scrapes both nodes ($((SECONDS - started))s)"

# Load: fan-out over both nodes, every member reconnecting halfway with
# since (replays); then history pages; and the bad clients.
urls=(--url "ws://${addrs[0]}/ws" --url "ws://${addrs[1]}/ws")
python3 scripts/ops-bad-clients.py "${addrs[0]}"
python3 scripts/ops-bad-clients.py "${addrs[1]}"
"$bin/loadtest" "${urls[@]}" --scenario reconnect --connections 200 --rooms 20 \
    --senders 4 --rate 100 --duration 8s --drain 2s --quiet --max-loss 0 >/dev/null
"$bin/loadtest" "${urls[@]}" --scenario history --connections 2 --rooms 1 --senders 2 \
    --duration 3s --quiet >/dev/null
load_end=$(date +%s)
echo "ops: load done ($((SECONDS - started))s)"

# Each node's /metrics after the load, through promtool's own check.
for addr in "${addrs[@]}"; do
    curl -fsS "http://$addr/metrics" >"$WORK/metrics.txt"
    problems=$(promtool check metrics <"$WORK/metrics.txt" 2>&1) \
        || die "promtool check metrics on $addr: $problems"
    [ -z "$problems" ] || die "promtool check metrics on $addr: $problems"
    echo "ops: promtool check metrics on $addr: ok ($(grep -c '^# TYPE' "$WORK/metrics.txt") metrics)"
done

# Wait until Prometheus has scraped past the load's end, and the rules
# have been evaluated since.
scraped_after() {
    curl -fsS "$prom/api/v1/query?query=min(timestamp(gateway_build_info))" \
        | python3 -c "import json,sys; r=json.load(sys.stdin)['data']['result']; sys.exit(0 if r and float(r[0]['value'][1]) > $load_end + 1 else 1)"
}
wait_until 30 "scrapes after the load" scraped_after
at=$(date +%s)

# Every panel's queries, all nodes and one node, over the last minute (the
# whole load), and every recording rule.
python3 scripts/ops-dashboards.py query --prometheus "$prom" --time "$at" --instance "${addrs[0]}" \
    --rate-interval 1m grafana/dashboards/*.json
python3 - "$prom" "$at" <<'PY'
import json, math, sys, urllib.parse, urllib.request
prom, at = sys.argv[1], sys.argv[2]
rules = json.load(urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=10))["data"]["groups"]
problems, n = [], 0
for g in rules:
    for r in g["rules"]:
        n += 1
        if r.get("health") != "ok":
            problems.append(f"rule {r['name']}: {r.get('health')} {r.get('lastError')}")
        if r["type"] != "recording":
            continue
        url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": r["name"], "time": at})
        data = json.load(urllib.request.urlopen(url, timeout=10))["data"]["result"]
        if not any(not math.isnan(float(s["value"][1])) for s in data):
            problems.append(f"recording rule {r['name']}: no data")
for p in problems:
    print(p, file=sys.stderr)
print(f"rules: {n} evaluated by Prometheus, {len(problems)} problems")
sys.exit(1 if problems else 0)
PY
echo "ops: ok ($((SECONDS - started))s)"
