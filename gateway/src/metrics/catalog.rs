//! The help text and unit of every `gateway_*` metric the node itself
//! records (the bus's, persister's and store's are described by their
//! crates; the delivery histogram and `process_*` by the modules that
//! render them). docs/METRICS.md is the catalog operators read; the metrics
//! test holds the two together.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub(super) fn describe() {
    describe_gauge!(
        "gateway_build_info",
        Unit::Count,
        "Always 1; the labels say which build runs: version (the crate's) and commit (git, or unknown)."
    );
    describe_gauge!(
        "gateway_node_ready",
        Unit::Count,
        "1 while the node can serve (what /readyz says: not draining and the bus ready), else 0; read at scrape time."
    );
    describe_gauge!(
        "gateway_node_draining",
        Unit::Count,
        "1 once the node drains (SIGTERM/SIGINT: upgrades refused, clients closed 1001), else 0."
    );
    describe_gauge!(
        "gateway_connections_active",
        Unit::Count,
        "WebSocket connections open on this node."
    );
    describe_counter!(
        "gateway_connections_opened_total",
        Unit::Count,
        "WebSocket connections opened (upgraded)."
    );
    describe_counter!(
        "gateway_connections_closed_total",
        Unit::Count,
        "WebSocket connections ended, by close code sent (1000..4029, other) or dropped (lost without a close handshake)."
    );
    describe_counter!(
        "gateway_connections_refused_total",
        Unit::Count,
        "Connections refused at the upgrade or after auth, by reason (origin, memory, node_cap, ip_cap, user_cap, draining)."
    );
    describe_counter!(
        "gateway_auth_failures_total",
        Unit::Count,
        "Failed authentications: tokens refused (header, auth: close 4001; refresh: the old token stays), no auth in time, a token's lifetime over; by reason (invalid, expired, not_yet_valid, bad_user, token_required, no_key, timeout)."
    );
    describe_counter!(
        "gateway_auth_jwks_reloads_total",
        Unit::Count,
        "JWKS file reloads, by result (ok, or failed: the old keys stay)."
    );
    describe_counter!(
        "gateway_ws_frames_received_total",
        Unit::Count,
        "WebSocket frames read from clients (control frames included)."
    );
    describe_counter!(
        "gateway_ws_frames_sent_total",
        Unit::Count,
        "WebSocket frames written to clients whole (replies, deliveries, control frames)."
    );
    describe_counter!(
        "gateway_ws_received_bytes_total",
        Unit::Bytes,
        "Bytes read from WebSocket clients' sockets after the upgrade, in bytes."
    );
    describe_counter!(
        "gateway_ws_sent_bytes_total",
        Unit::Bytes,
        "Bytes written to WebSocket clients' sockets, in bytes."
    );
    describe_counter!(
        "gateway_ws_requests_total",
        Unit::Count,
        "Requests parsed from clients, by op; gateway_ws_errors_total has those answered with an error."
    );
    describe_counter!(
        "gateway_ws_errors_total",
        Unit::Count,
        "Error replies to clients, by op (invalid: the frame was no request) and code (bad_request, unauthorized, forbidden, ...)."
    );
    describe_counter!(
        "gateway_ws_rate_limited_total",
        Unit::Count,
        "Requests refused rate_limited, by bucket (send: send and typing; request: join, leave, history, presence; user: the user's send rate over all connections)."
    );
    describe_counter!(
        "gateway_replay_requests_total",
        Unit::Count,
        "Joins with since, by whether the gap was replayed (recovered true) or is to be paged with history (false)."
    );
    describe_counter!(
        "gateway_replay_messages_total",
        Unit::Count,
        "Messages replayed to clients joining with since."
    );
    describe_counter!(
        "gateway_fanout_deliveries_total",
        Unit::Count,
        "Room messages and events queued to local member connections (one per message per connection)."
    );
    describe_histogram!(
        "gateway_send_ack_duration_seconds",
        Unit::Seconds,
        "Time from publishing a client's send batch to the bus until it was acknowledged, per message, in seconds."
    );
    describe_counter!(
        "gateway_slow_consumer_disconnects_total",
        Unit::Count,
        "Connections closed 4008, by reason (queue_overflow: outbound queue past its bounds; write_timeout: no write progress)."
    );
    describe_counter!(
        "gateway_moderation_actions_total",
        Unit::Count,
        "(1.1) Operator actions of the server API this node applied to its connections, by action (kick, disconnect, revoke)."
    );
    describe_counter!(
        "gateway_moderation_connections_total",
        Unit::Count,
        "(1.1) Connections of this node the operator actions found (removed from a room, or closed 4003 when their token was covered), by action."
    );
    describe_counter!(
        "gateway_api_requests_total",
        Unit::Count,
        "(1.1) Server API calls answered, by key (the API key's name; none when no key matched), action (publish, history, delete, kick, disconnect, revoke, broadcast, room, presence, unknown) and outcome (ok, or the error code)."
    );
    describe_counter!(
        "gateway_http_requests_total",
        Unit::Count,
        "HTTP requests received on either listener (upgrades, health, metrics, server API)."
    );
}
