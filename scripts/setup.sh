#!/usr/bin/env bash
# Installs what the tests need and the machine lacks (Debian packages):
#
#   redis-server, redis-cli   redis-server redis-tools   (testkit starts Redis servers and clusters)
#   java                      default-jdk-headless       (JDK 17 on bookworm: runs Cassandra, the CQL server)
#   mvn                       maven                      (fetches Cassandra's jars once, see services.sh)
#   python3                   python3                    (services.sh: free ports, CQL readiness)
#   curl                      curl                       (the benches/ scripts)
#   cc                        gcc libc6-dev              (the linker, and libmimalloc-sys's C build)
#   promtool, prometheus      prometheus                 (the metrics test's promtool check, and
#                                                         scripts/ops-check.sh: rules, a real Prometheus)
#   node, npm                 nodejs npm                 (scripts/test-js.sh: the TypeScript client, the demo
#                                                         page's build, the browser test; Node 18 or later)
#   chromium                  chromium                   (the browser test, driven by playwright-core)
#
# Checks with `command -v` first: when everything is there it does nothing
# (no apt-get update) and returns at once. Runs apt-get as root, or through
# sudo. Cargo itself is not a Debian package here (the workspace needs a
# newer Rust than Debian ships): install it with rustup.
#   bash scripts/setup.sh
set -euo pipefail

die() { echo "setup: $*" >&2; exit 1; }

want() {  # package... : wanted when any of the commands before "--" is absent
    local cmds=() arg
    while [ "$1" != -- ]; do cmds+=("$1"); shift; done
    shift
    for arg in "${cmds[@]}"; do
        if ! command -v "$arg" >/dev/null 2>&1; then
            missing+=("$@")
            return 0
        fi
    done
}
check() {
    missing=()
    want redis-server redis-cli -- redis-server redis-tools
    want java -- default-jdk-headless
    want mvn -- maven
    want python3 -- python3
    want curl -- curl
    want cc -- gcc libc6-dev
    # Debian's package also enables a prometheus service (on :9090, data in
    # /var/lib/prometheus); our checks run their own on a free port.
    want promtool prometheus -- prometheus
    want node npm -- nodejs npm
    want chromium -- chromium
}
check

if [ ${#missing[@]} -gt 0 ]; then
    sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 \
            || die "missing ${missing[*]}, and not root and no sudo: apt-get install ${missing[*]}"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]}, and no apt-get to install them"
    echo "setup: installing ${missing[*]}" >&2
    # Quiet: apt's output is shown when it fails, and only its warnings
    # and errors (W:/E: lines) when it succeeds.
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 \
        || { cat "$log" >&2; die "apt-get update failed"; }
    grep -E '^[WE]:' "$log" >&2 || true
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$log" 2>&1 \
        || { cat "$log" >&2; die "apt-get install ${missing[*]} failed"; }
    grep -E '^[WE]:' "$log" >&2 || true
    check
    [ ${#missing[@]} -eq 0 ] || die "still missing after apt-get install: ${missing[*]}"
fi

command -v cargo >/dev/null 2>&1 || die "cargo is required: install Rust with rustup (https://rustup.rs)"
