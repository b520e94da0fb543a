//! Gateway metrics (`gateway_*`), rendered on `/metrics` by our own router.
//!
//! Handles are resolved once and cached: the hot paths only touch atomics.
//! No room or user id is ever a label.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder once per process (tests start several
/// nodes in one process) and keeps its histograms bounded with upkeep.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_messages".into()), &sizes))
                .expect("static bucket lists are not empty")
                .install_recorder()
                .expect("the metrics recorder is installed once");
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

pub struct GatewayMetrics {
    pub connections_active: Gauge,
    pub connections_opened: Counter,
    pub frames_received: Counter,
    pub frames_sent: Counter,
    pub bytes_sent: Counter,
    pub deliveries: Counter,
    pub send_seconds: Histogram,
    pub http_requests: Counter,
    pub slow_consumers: Counter,
}

pub fn get() -> &'static GatewayMetrics {
    static M: OnceLock<GatewayMetrics> = OnceLock::new();
    M.get_or_init(|| GatewayMetrics {
        connections_active: gauge!("gateway_connections_active"),
        connections_opened: counter!("gateway_connections_opened_total"),
        frames_received: counter!("gateway_ws_frames_received_total"),
        frames_sent: counter!("gateway_ws_frames_sent_total"),
        bytes_sent: counter!("gateway_ws_sent_bytes_total"),
        deliveries: counter!("gateway_fanout_deliveries_total"),
        send_seconds: histogram!("gateway_send_ack_duration_seconds"),
        http_requests: counter!("gateway_http_requests_total"),
        slow_consumers: counter!("gateway_slow_consumer_disconnects_total"),
    })
}

/// Connections closed, by close code (a small fixed set).
pub fn connection_closed(code: &'static str) {
    counter!("gateway_connections_closed_total", "code" => code).increment(1);
}

/// Connections refused at the upgrade or after `auth`, by reason
/// (`admission::Refusal::reason`: a small fixed set).
pub fn connection_refused(reason: &'static str) {
    counter!("gateway_connections_refused_total", "reason" => reason).increment(1);
}

/// JWKS file reloads, by result (`ok` or `failed`).
pub fn jwks_reload(result: &'static str) {
    counter!("gateway_auth_jwks_reloads_total", "result" => result).increment(1);
}

/// Requests by op (a fixed set) and error replies by code.
pub fn request(op: &'static str) {
    counter!("gateway_ws_requests_total", "op" => op).increment(1);
}

pub fn error_reply(code: protocol::ErrorCode) {
    counter!("gateway_ws_errors_total", "code" => code.as_str()).increment(1);
}
