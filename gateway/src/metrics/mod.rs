//! Gateway metrics (`gateway_*`), rendered on `/metrics` by our own router.
//! docs/METRICS.md is the catalog (name, type, labels, meaning, unit);
//! every metric is registered with its help text ([`catalog`], and the
//! `describe_metrics` of the dispatcher and storage crates).
//!
//! Handles are resolved once and cached: the hot paths only touch atomics.
//! Labelled counters with a fixed set of values ([`Family`]) are resolved
//! for every value at start, so they are exported at zero before their
//! first event. No room or user id is ever a label.
//!
//! Besides the `metrics` recorder's output, a scrape renders
//! [`delivery`] (publish-to-deliver latency, plain atomics) and [`process`]
//! (`process_*` from `/proc`), and reads the node's readiness.

mod catalog;
pub mod delivery;
mod process;

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::Node;

/// Request ops, as `protocol::Request::op` names them (the `op` label), in
/// [`op_of`] order.
pub const OPS: [&str; 15] = [
    "auth", "refresh", "join", "leave", "send", "history", "presence", "typing", "ping", "edit", "delete", "react",
    "unreact", "read", "receipts",
];
/// The `op` of an error that answers a frame that was no request.
pub const INVALID_OP: u8 = OPS.len() as u8;
const ERROR_OPS: [&str; OPS.len() + 1] = [
    "auth", "refresh", "join", "leave", "send", "history", "presence", "typing", "ping", "edit", "delete", "react",
    "unreact", "read", "receipts", "invalid",
];

const CLOSE_CODES: [&str; 13] = [
    "1000", "1001", "1002", "1003", "1007", "1008", "1009", "4001", "4003", "4008", "4029", "other", "dropped",
];
const REFUSALS: [&str; 6] = ["origin", "memory", "node_cap", "ip_cap", "user_cap", "draining"];
const AUTH_FAILURES: [&str; 9] = [
    "invalid",
    "expired",
    "not_yet_valid",
    "bad_user",
    "token_required",
    "no_key",
    "timeout",
    "lifetime",
    "revoked",
];
/// (1.1) Operator actions (`dispatcher::Control::kind`).
const OPERATOR_ACTIONS: [&str; 3] = ["kick", "disconnect", "revoke"];
const JWKS_RESULTS: [&str; 2] = ["ok", "failed"];
const SLOW_CONSUMER_REASONS: [&str; 2] = ["queue_overflow", "write_timeout"];
/// `protocol::ErrorCode`s, in [`code_index`] order.
const ERROR_CODES: usize = 8;

/// Installs the Prometheus recorder once per process (tests start several
/// nodes in one process), registers every metric with its help text, and
/// keeps histograms bounded with upkeep.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = dispatcher::exporter_builder()
                .install_recorder()
                .expect("the metrics recorder is installed once");
            process::mark_start();
            catalog::describe();
            dispatcher::describe_metrics();
            storage::describe_metrics();
            get().build_info.set(1.0);
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

/// One scrape of `/metrics`: the node's readiness read now, the recorder's
/// metrics, the delivery histogram and the process metrics.
pub fn render(node: &Node) -> String {
    let m = get();
    m.node_ready.set(if node.is_ready() { 1.0 } else { 0.0 });
    m.node_draining
        .set(if node.shutdown.is_cancelled() { 1.0 } else { 0.0 });
    let mut out = node.prometheus.render();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    delivery::LATENCY.render(&mut out);
    process::render(&mut out);
    out
}

/// One counter per value of one label, resolved once; a value outside the
/// set is still counted (resolved at each use).
pub struct Family {
    name: &'static str,
    label: &'static str,
    values: &'static [&'static str],
    counters: Vec<Counter>,
}

impl Family {
    fn new(name: &'static str, label: &'static str, values: &'static [&'static str]) -> Family {
        let counters = values.iter().map(|&v| counter!(name, label => v)).collect();
        Family {
            name,
            label,
            values,
            counters,
        }
    }

    pub fn increment(&self, value: &'static str) {
        match self.values.iter().position(|&v| v == value) {
            Some(i) => self.counters[i].increment(1),
            None => counter!(self.name, self.label => value).increment(1),
        }
    }
}

pub struct GatewayMetrics {
    pub connections_active: Gauge,
    pub connections_opened: Counter,
    pub connections_closed: Family,
    pub connections_refused: Family,
    pub auth_failures: Family,
    pub jwks_reloads: Family,
    pub frames_received: Counter,
    pub frames_sent: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    /// By op, in [`OPS`] order.
    requests: Vec<Counter>,
    /// By op ([`ERROR_OPS`]) and code ([`code_index`]), resolved at first use.
    errors: Vec<[OnceLock<Counter>; ERROR_CODES]>,
    pub rate_limited_send: Counter,
    pub rate_limited_request: Counter,
    pub rate_limited_user: Counter,
    pub replays_recovered: Counter,
    pub replays_unrecovered: Counter,
    pub replayed_messages: Counter,
    pub deliveries: Counter,
    pub send_seconds: Histogram,
    pub http_requests: Counter,
    pub slow_consumers: Family,
    /// (1.1) Operator actions this node applied, by action.
    operator_actions: Family,
    /// (1.1) Connections they acted on, by action.
    operator_connections: Vec<Counter>,
    node_ready: Gauge,
    node_draining: Gauge,
    build_info: Gauge,
}

pub fn get() -> &'static GatewayMetrics {
    static M: OnceLock<GatewayMetrics> = OnceLock::new();
    M.get_or_init(|| GatewayMetrics {
        connections_active: gauge!("gateway_connections_active"),
        connections_opened: counter!("gateway_connections_opened_total"),
        connections_closed: Family::new("gateway_connections_closed_total", "code", &CLOSE_CODES),
        connections_refused: Family::new("gateway_connections_refused_total", "reason", &REFUSALS),
        auth_failures: Family::new("gateway_auth_failures_total", "reason", &AUTH_FAILURES),
        jwks_reloads: Family::new("gateway_auth_jwks_reloads_total", "result", &JWKS_RESULTS),
        frames_received: counter!("gateway_ws_frames_received_total"),
        frames_sent: counter!("gateway_ws_frames_sent_total"),
        bytes_received: counter!("gateway_ws_received_bytes_total"),
        bytes_sent: counter!("gateway_ws_sent_bytes_total"),
        requests: OPS
            .iter()
            .map(|&op| counter!("gateway_ws_requests_total", "op" => op))
            .collect(),
        errors: ERROR_OPS.iter().map(|_| Default::default()).collect(),
        rate_limited_send: counter!("gateway_ws_rate_limited_total", "bucket" => "send"),
        rate_limited_request: counter!("gateway_ws_rate_limited_total", "bucket" => "request"),
        rate_limited_user: counter!("gateway_ws_rate_limited_total", "bucket" => "user"),
        replays_recovered: counter!("gateway_replay_requests_total", "recovered" => "true"),
        replays_unrecovered: counter!("gateway_replay_requests_total", "recovered" => "false"),
        replayed_messages: counter!("gateway_replay_messages_total"),
        deliveries: counter!("gateway_fanout_deliveries_total"),
        send_seconds: histogram!("gateway_send_ack_duration_seconds"),
        http_requests: counter!("gateway_http_requests_total"),
        slow_consumers: Family::new(
            "gateway_slow_consumer_disconnects_total",
            "reason",
            &SLOW_CONSUMER_REASONS,
        ),
        operator_actions: Family::new("gateway_moderation_actions_total", "action", &OPERATOR_ACTIONS),
        operator_connections: OPERATOR_ACTIONS
            .iter()
            .map(|&a| counter!("gateway_moderation_connections_total", "action" => a))
            .collect(),
        node_ready: gauge!("gateway_node_ready"),
        node_draining: gauge!("gateway_node_draining"),
        build_info: gauge!(
            "gateway_build_info",
            "version" => env!("CARGO_PKG_VERSION"),
            "commit" => env!("GATEWAY_COMMIT"),
        ),
    })
}

/// The index of `op` (a `protocol::Request::op` name) in [`OPS`], else
/// [`INVALID_OP`].
pub fn op_index(op: &str) -> u8 {
    OPS.iter().position(|&o| o == op).map_or(INVALID_OP, |i| i as u8)
}

/// The index of a request's op in [`OPS`]. The match is exhaustive, so a
/// new op cannot be added to the protocol without its label here.
pub fn op_of(req: &protocol::Request) -> u8 {
    use protocol::Request::*;
    match req {
        Auth { .. } => 0,
        Refresh { .. } => 1,
        Join { .. } => 2,
        Leave { .. } => 3,
        Send { .. } => 4,
        History { .. } => 5,
        Presence { .. } => 6,
        Typing { .. } => 7,
        Ping => 8,
        Change { change, .. } => match change.kind {
            protocol::ChangeKind::Edit => 9,
            protocol::ChangeKind::Delete => 10,
            protocol::ChangeKind::React(_) => 11,
            protocol::ChangeKind::Unreact(_) => 12,
        },
        Read { .. } => 13,
        Receipts { .. } => 14,
    }
}

/// Connections closed, by close code (a small fixed set).
pub fn connection_closed(code: &'static str) {
    get().connections_closed.increment(code);
}

/// Connections refused at the upgrade or after `auth`, by reason
/// (`admission::Refusal::reason`: a small fixed set).
pub fn connection_refused(reason: &'static str) {
    get().connections_refused.increment(reason);
}

/// A failed authentication, by reason (`auth::AuthError::reason`, or
/// `timeout`).
pub fn auth_failed(reason: &'static str) {
    get().auth_failures.increment(reason);
}

/// (1.1) An operator action this node applied to `connections` of its own.
pub fn operator_action(action: &'static str, connections: usize) {
    let m = get();
    m.operator_actions.increment(action);
    if let Some(i) = OPERATOR_ACTIONS.iter().position(|&a| a == action) {
        m.operator_connections[i].increment(connections as u64);
    }
}

/// (1.1) A server API call, by the name of the key that made it (`none`:
/// refused before a key matched), the action, and the outcome (`ok` or
/// the error code).
pub fn api_request(key: &str, action: &'static str, outcome: &'static str) {
    counter!("gateway_api_requests_total", "key" => key.to_string(), "action" => action, "outcome" => outcome)
        .increment(1);
}

/// JWKS file reloads, by result (`ok` or `failed`).
pub fn jwks_reload(result: &'static str) {
    get().jwks_reloads.increment(result);
}

/// A request parsed, by its op ([`op_index`]).
pub fn request(op: u8) {
    if let Some(c) = get().requests.get(op as usize) {
        c.increment(1);
    }
}

/// An error reply to a request with op `op` ([`op_index`]).
pub fn error_reply(op: u8, code: protocol::ErrorCode) {
    let m = get();
    let op = (op as usize).min(ERROR_OPS.len() - 1);
    let i = code_index(code);
    m.errors[op][i]
        .get_or_init(|| counter!("gateway_ws_errors_total", "op" => ERROR_OPS[op], "code" => code.as_str()))
        .increment(1);
}

fn code_index(code: protocol::ErrorCode) -> usize {
    use protocol::ErrorCode::*;
    match code {
        BadRequest => 0,
        Unauthorized => 1,
        Forbidden => 2,
        NotFound => 3,
        RateLimited => 4,
        TooLarge => 5,
        Unavailable => 6,
        Internal => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_the_protocol_ops() {
        assert_eq!(ERROR_OPS[..OPS.len()], OPS);
        assert_eq!(op_index("nonsense"), INVALID_OP);
        assert_eq!(ERROR_OPS[INVALID_OP as usize], "invalid");
        let frames = [
            r#"{"op":"auth"}"#,
            r#"{"op":"refresh","token":"t"}"#,
            r#"{"op":"join","room":"r"}"#,
            r#"{"op":"leave","room":"r"}"#,
            r#"{"op":"send","room":"r","body":1}"#,
            r#"{"op":"history","room":"r"}"#,
            r#"{"op":"presence","room":"r"}"#,
            r#"{"op":"typing","room":"r"}"#,
            r#"{"op":"ping"}"#,
            r#"{"op":"edit","room":"r","msg":"1","body":1}"#,
            r#"{"op":"delete","room":"r","msg":"1"}"#,
            r#"{"op":"react","room":"r","msg":"1","key":"k"}"#,
            r#"{"op":"unreact","room":"r","msg":"1","key":"k"}"#,
            r#"{"op":"read","room":"r","msg":"1"}"#,
            r#"{"op":"receipts","room":"r"}"#,
        ];
        assert_eq!(frames.len(), OPS.len());
        for frame in frames {
            let (_, req) = protocol::parse_request(&mut frame.as_bytes().to_vec()).unwrap();
            let i = op_of(&req);
            assert_eq!(OPS[i as usize], req.op(), "{frame}");
            assert_eq!(op_index(req.op()), i);
        }
    }
}
