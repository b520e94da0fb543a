# Shared by the benchmark scripts (sourced, not run).

# Flags that keep a node's per-connection limits out of a benchmark's way.
UNLIMITED=(--send-rate 1000000 --send-burst 1000000 --request-rate 1000000 --request-burst 1000000
    --max-rooms-per-connection 1000 --outbound-queue 8192)

# gateway_addr LOG [TRIES]: the address a gateway started with `--listen
# 127.0.0.1:0 --log-format json` logs once it listens (waits up to TRIES
# times 50 ms, default 200).
gateway_addr() {
    local addr
    for _ in $(seq 1 "${2:-200}"); do
        addr=$(grep -so '"addr":"[0-9.:]*"' "$1" | head -1 | cut -d'"' -f4 || true)
        if [ -n "$addr" ]; then
            echo "$addr"
            return 0
        fi
        sleep 0.05
    done
    echo "no listen address in $1:" >&2
    cat "$1" >&2
    return 1
}

# start_redis: a Redis from scripts/services.sh under $OUT/services
# (exports GATEWAY_REDIS_URL); on exit it is stopped and the processes in
# the array `pids` are killed.
start_redis() {
    export SERVICES_DIR=$OUT/services
    pids=()
    trap 'kill "${pids[@]}" 2>/dev/null || true; scripts/services.sh down >/dev/null 2>&1 || true' EXIT
    eval "export $(scripts/services.sh up redis)"
}
