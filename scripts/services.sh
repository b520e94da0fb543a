#!/usr/bin/env bash
# Real services for development, benchmarks and CI, on free loopback ports.
#
#   scripts/services.sh up redis           one Redis (appendonly, fsync always)
#   scripts/services.sh up redis-cluster   a three-master Redis Cluster
#   scripts/services.sh up cassandra       one Apache Cassandra 5.0 node (stands in
#                                          for ScyllaDB; CQL on loopback)
#   scripts/services.sh down               stop everything this script started
#   scripts/services.sh env                print the environment lines again
#
# `up` waits until the service answers, then prints the environment lines a
# gateway node needs (GATEWAY_REDIS_URL=..., GATEWAY_REDIS_CLUSTER_NODES=...,
# GATEWAY_SCYLLA_NODES=...), e.g. `eval "$(scripts/services.sh up redis)"`.
# State lives in $SERVICES_DIR (default /tmp/chat-gateway-services).
#
# Cassandra comes from Maven Central (org.apache.cassandra:cassandra-all and its
# runtime dependencies, fetched once with mvn into $CASSANDRA_CACHE, default
# ~/.cache/chat-gateway/cassandra-$CASSANDRA_VERSION) and runs on the machine's
# JDK 17 with a small heap ($CASSANDRA_HEAP, default 512m).
set -euo pipefail
STATE=${SERVICES_DIR:-/tmp/chat-gateway-services}
mkdir -p "$STATE"

die() { echo "services: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 not found${2:+ ($2)}"; }
need_redis() {
    need redis-server "apt-get install redis-server redis-tools"
    need redis-cli "apt-get install redis-server redis-tools"
}
alive() {  # pid: running (an exited but unreaped zombie counts as gone)
    kill -0 "$1" 2>/dev/null || return 1
    local state
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

free_port() {
    # A free port whose cluster bus port (+10000) is free too.
    python3 - <<'PY'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p >= 55000: s.close(); continue
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p + 10000)); print(p); break
    except OSError:
        pass
    finally:
        s.close(); t.close()
PY
}

wait_for() {  # port
    for _ in $(seq 1 200); do
        [ "$(redis-cli -p "$1" ping 2>/dev/null || true)" = PONG ] && return 0
        sleep 0.05
    done
    die "redis on port $1 did not answer"
}

start_redis() {  # port dir [extra args...]
    local port=$1 dir=$2; shift 2
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize yes \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
        --appendonly yes --appendfsync always --save "" "$@" >/dev/null
    wait_for "$port"
    echo "$dir/redis.pid" >>"$STATE/pids"
}

CASSANDRA_VERSION=${CASSANDRA_VERSION:-5.0.9}
CASSANDRA_CACHE=${CASSANDRA_CACHE:-$HOME/.cache/chat-gateway/cassandra-$CASSANDRA_VERSION}
CASSANDRA_HEAP=${CASSANDRA_HEAP:-512m}

fetch_cassandra() {
    # cassandra-all and its runtime dependencies into $CASSANDRA_CACHE/lib, once:
    # the .complete marker is written last, so a cut-off download is redone.
    [ -f "$CASSANDRA_CACHE/.complete" ] && return 0
    need mvn "apt-get install maven"
    local tmp="$CASSANDRA_CACHE.partial.$$"
    rm -rf "$tmp"; mkdir -p "$tmp/lib"
    cat >"$tmp/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>chat-gateway.services</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASSANDRA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    echo "services: fetching cassandra-all $CASSANDRA_VERSION with mvn into $CASSANDRA_CACHE" >&2
    mvn -B -q -f "$tmp/pom.xml" \
        org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp/lib" >"$tmp/mvn.log" 2>&1 \
        || { tail -n 30 "$tmp/mvn.log" >&2; rm -rf "$tmp"; die "mvn could not fetch cassandra-all $CASSANDRA_VERSION"; }
    [ -f "$tmp/lib/cassandra-all-$CASSANDRA_VERSION.jar" ] \
        || { rm -rf "$tmp"; die "cassandra-all-$CASSANDRA_VERSION.jar missing after mvn"; }
    if [ -f "$CASSANDRA_CACHE/.complete" ]; then  # a concurrent run finished first
        rm -rf "$tmp"; return 0
    fi
    rm -rf "$CASSANDRA_CACHE"
    mkdir -p "$(dirname "$CASSANDRA_CACHE")"
    mv "$tmp" "$CASSANDRA_CACHE"
    touch "$CASSANDRA_CACHE/.complete"
}

cql_ready() {  # port: a CQL v4 OPTIONS request gets a SUPPORTED response
    python3 - "$1" <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    s.settimeout(2)
    # version 4 request, flags 0, stream 1, opcode OPTIONS (0x05), empty body
    s.sendall(bytes([0x04, 0x00, 0x00, 0x01, 0x05, 0x00, 0x00, 0x00, 0x00]))
    head = b""
    while len(head) < 9:
        chunk = s.recv(9 - len(head))
        if not chunk:
            sys.exit(1)
        head += chunk
    # a version 4 response (0x84) with opcode SUPPORTED (0x06)
    sys.exit(0 if head[0] == 0x84 and head[4] == 0x06 else 1)
except OSError:
    sys.exit(1)
PY
}

start_cassandra() {  # native_port storage_port dir
    local native=$1 storage=$2 dir=$3
    mkdir -p "$dir"/{data,commitlog,saved_caches,hints,cdc_raw,triggers}
    cat >"$dir/cassandra.yaml" <<EOF
cluster_name: chat-gateway-test
num_tokens: 16
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
data_file_directories:
  - $dir/data
commitlog_directory: $dir/commitlog
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc_raw
# The persister acknowledges stream entries once the store has them: the
# commit log must be on disk by then.
commitlog_sync: batch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$storage"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $storage
native_transport_port: $native
start_native_transport: true
endpoint_snitch: SimpleSnitch
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
# Small: two cores and a 512 MiB heap.
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
concurrent_compactors: 1
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
file_cache_size: 32MiB
key_cache_size: 16MiB
EOF
    cat >"$dir/logback.xml" <<'EOF'
<configuration>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
EOF
    local lib="$CASSANDRA_CACHE/lib" jamm=()
    for j in "$lib"/jamm-*.jar; do [ -f "$j" ] && jamm=("-javaagent:$j"); done
    # Cassandra mlockall()s its whole address space at startup, which as root
    # pins ~950 MB instead of ~600 MB resident. Without CAP_IPC_LOCK and with no
    # memlock allowance it only logs a warning.
    local nolock=()
    if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
        nolock=(setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock)
    fi
    # Flags from Cassandra 5.0's conf/jvm-server.options and jvm17-server.options
    # (the JPMS exports/opens JDK 17 needs). No JMX: without
    # -Dcassandra.jmx.local.port Cassandra starts no JMX server.
    (ulimit -l 0; exec setsid "${nolock[@]}" java \
        -Xms"$CASSANDRA_HEAP" -Xmx"$CASSANDRA_HEAP" -Xss256k \
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 \
        -XX:+UseThreadPriorities -XX:+PerfDisableSharedMem \
        -XX:+ExitOnOutOfMemoryError \
        -ea -da:net.openhft... "${jamm[@]}" \
        -Djava.net.preferIPv4Stack=true \
        -Djdk.attach.allowAttachSelf=true \
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \
        --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \
        --add-exports java.sql/java.sql=ALL-UNNAMED \
        --add-exports java.base/java.lang.ref=ALL-UNNAMED \
        --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED \
        --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED \
        --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED \
        --add-opens java.base/java.lang.module=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.module=ALL-UNNAMED \
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED \
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED \
        --add-opens java.base/java.io=ALL-UNNAMED \
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED \
        --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED \
        --add-opens java.base/java.lang=ALL-UNNAMED \
        --add-opens java.base/java.util=ALL-UNNAMED \
        -Dio.netty.tryReflectionSetAccessible=true \
        -Dio.netty.allocator.useCacheForAllThreads=true \
        -Dio.netty.allocator.maxOrder=11 \
        -Dcassandra-foreground=yes \
        -Dcassandra.config="file://$dir/cassandra.yaml" \
        -Dcassandra.storagedir="$dir" -Dcassandra.triggers_dir="$dir/triggers" \
        -Dcassandra.logdir="$dir" \
        -Dlogback.configurationFile="$dir/logback.xml" \
        -Dcassandra.skip_wait_for_gossip_to_settle=0 \
        -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon
    ) >"$dir/cassandra.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$dir/cassandra.pid"
    echo "$dir/cassandra.pid" >>"$STATE/pids"
    local limit=${CASSANDRA_START_TIMEOUT:-180}
    local deadline=$((SECONDS + limit))
    until cql_ready "$native"; do
        if ! alive "$pid"; then
            tail -n 40 "$dir/cassandra.log" >&2
            die "cassandra exited during startup: see $dir/cassandra.log"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 40 "$dir/cassandra.log" >&2
            kill "$pid" 2>/dev/null || true
            die "cassandra did not answer CQL on port $native within ${limit}s: see $dir/cassandra.log"
        fi
        sleep 0.5
    done
}

case "${1:-}" in
up)
    case "${2:-}" in
    redis)
        need_redis
        port=$(free_port)
        start_redis "$port" "$STATE/redis-$port"
        echo "GATEWAY_REDIS_URL=redis://127.0.0.1:$port" >>"$STATE/env"
        echo "GATEWAY_REDIS_URL=redis://127.0.0.1:$port"
        ;;
    redis-cluster)
        need_redis
        ports=()
        for _ in 1 2 3; do
            port=$(free_port)
            start_redis "$port" "$STATE/cluster-$port" --cluster-enabled yes \
                --cluster-config-file nodes.conf --cluster-node-timeout 2000
            ports+=("$port")
        done
        redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") \
            --cluster-replicas 0 --cluster-yes >"$STATE/cluster-create.log" 2>&1 \
            || die "redis-cli --cluster create failed: see $STATE/cluster-create.log"
        for port in "${ports[@]}"; do
            for _ in $(seq 1 200); do
                redis-cli -p "$port" cluster info 2>/dev/null | grep -q cluster_state:ok && break
                sleep 0.05
            done
            redis-cli -p "$port" cluster info | grep -q cluster_state:ok || die "cluster not ok on $port"
        done
        line="GATEWAY_REDIS_CLUSTER_NODES=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}" | sed 's/,$//')"
        echo "$line" >>"$STATE/env"
        echo "$line"
        ;;
    cassandra)
        need java "apt-get install openjdk-17-jre-headless"; need python3
        fetch_cassandra
        native=$(free_port)
        storage=$(free_port)
        while [ "$storage" = "$native" ]; do storage=$(free_port); done
        start_cassandra "$native" "$storage" "$STATE/cassandra-$native"
        echo "GATEWAY_SCYLLA_NODES=127.0.0.1:$native" >>"$STATE/env"
        echo "GATEWAY_SCYLLA_NODES=127.0.0.1:$native"
        ;;
    *) die "usage: $0 up redis|redis-cluster|cassandra" ;;
    esac
    ;;
down)
    pids=()
    if [ -f "$STATE/pids" ]; then
        while read -r pidfile; do
            [ -f "$pidfile" ] && pids+=("$(cat "$pidfile")")
        done <"$STATE/pids"
    fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        # Cassandra drains on SIGTERM, which can take a while on two cores.
        for _ in $(seq 1 600); do alive "$pid" || break; sleep 0.05; done
        if alive "$pid"; then
            kill -9 "$pid" 2>/dev/null || true
            for _ in $(seq 1 200); do alive "$pid" || break; sleep 0.05; done
        fi
    done
    rm -rf "$STATE"
    ;;
env)
    cat "$STATE/env" 2>/dev/null || true
    ;;
*)
    die "usage: $0 up redis|redis-cluster|cassandra | down | env"
    ;;
esac
