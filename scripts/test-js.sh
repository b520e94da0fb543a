#!/usr/bin/env bash
# The browser side, after the Rust tests (scripts/test.sh calls it):
#   1. clients/js: the TypeScript client's unit tests (node:test, a fake
#      socket and fake timers);
#   2. clients/demo: the demo page rebuilt from its source must be what
#      gateway/assets/demo holds (the gateway embeds those files);
#   3. clients/e2e: two pages in headless Chromium (Debian's, driven by
#      playwright-core) chat on two real gateway nodes on Redis, through a
#      kill -9 of one node.
# Node packages come from each folder's package-lock.json (`npm ci`), with
# npm's cache outside the clone. GATEWAY_BIN: the gateway binary for the
# e2e test (default: the debug build `cargo test` made).
#   bash scripts/test-js.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export npm_config_cache=${npm_config_cache:-${HOME:-/root}/.cache/chat-gateway/npm}
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
export GATEWAY_BIN=${GATEWAY_BIN:-${CARGO_TARGET_DIR:-target}/debug/gateway}
[ -x "$GATEWAY_BIN" ] || { echo "test-js: no gateway binary at $GATEWAY_BIN (cargo build -p gateway)" >&2; exit 1; }

echo "== clients/js: unit tests" >&2
(cd clients/js && npm ci --silent && npm test)

echo "== clients/demo: the committed page is its source's build" >&2
(cd clients/demo && npm ci --silent && npm run check)

echo "== clients/e2e: two browsers, two nodes, one kill -9" >&2
# The screenshot for the README is refreshed by hand runs, not by CI.
(cd clients/e2e && npm ci --silent && E2E_DOCS_SCREENSHOT=0 npm test)
