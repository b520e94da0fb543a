#!/usr/bin/env bash
# The test command: starts the real CQL server the storage and history tests
# use (Apache Cassandra standing in for ScyllaDB, via scripts/services.sh),
# runs every test of the workspace, then the browser side (scripts/test-js.sh:
# the TypeScript client, the demo page, Chromium end to end), and stops the
# server. Redis servers and
# gateway processes are started by the tests themselves (testkit).
# A GATEWAY_SCYLLA_NODES already set is used as it is (e.g. a ScyllaDB).
# First it installs what is missing (scripts/setup.sh: Redis, a JDK, Maven,
# python3, ...; nothing when all is there).
#   bash scripts/test.sh [cargo test arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${GATEWAY_SCYLLA_NODES:-}" ]; then
    export SERVICES_DIR=${SERVICES_DIR:-$(mktemp -d)}
    trap 'scripts/services.sh down >/dev/null 2>&1 || true' EXIT
    eval "$(scripts/services.sh up cassandra)"
fi
# Tests get the CQL server under a name of their own, and no GATEWAY_*
# setting: the nodes they start are configured by their flags alone.
export CHAT_TEST_CQL_NODES=$GATEWAY_SCYLLA_NODES
for v in $(compgen -e | grep '^GATEWAY_' || true); do unset "$v"; done
echo "tests use the CQL server at $CHAT_TEST_CQL_NODES" >&2
cargo test --workspace "$@"
# The TypeScript client, the demo page and the browser end-to-end test
# (on the gateway binary the tests above built).
bash scripts/test-js.sh
