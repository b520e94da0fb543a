#!/usr/bin/env bash
# What the event feed (1.1) costs: the publish rate (acked/s with more
# offered than one node takes) and a room of 1,000's deliveries and
# send-to-ack p99, with GATEWAY_FEED off and on, interleaved in one sitting
# (off, on, off, on, ...), each run on a fresh Redis with one node.
#
#   bash benches/feed.sh [rounds=3] [seconds=8]
#
# The feed is written with no consumer reading it (the shard streams are
# the feed streams, and fill to GATEWAY_FEED_MAXLEN and are trimmed as they
# append), which is its cost to the gateway and Redis. Load goes to
# loopback only.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-8}
cd "$(dirname "$0")/.."
for round in $(seq 1 "$ROUNDS"); do
    for feed in false true; do
        GATEWAY_FEED=$feed SHAPES="publish room1000" bash benches/cluster_fanout.sh 1 "$SECS" 2>/dev/null \
            | grep -E '^(publish|room1000):' | sed "s/^/round=$round feed=$feed /"
    done
done
