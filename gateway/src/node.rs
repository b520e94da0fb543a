//! [`Node`]: the state every connection and HTTP handler of one node
//! shares. [`crate::run`] builds it once; [`crate::http`] and
//! [`crate::conn`] hold it through an `Arc`.

use std::sync::Arc;

use dispatcher::Bus;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::{admission, auth, hub};

/// What every connection and handler of one node shares.
pub struct Node {
    pub settings: Settings,
    /// Configured, leased in Redis, or `gw-0`.
    pub node_id: String,
    pub auth: auth::Authenticator,
    pub hub: Arc<hub::Hub>,
    pub bus: Arc<dyn Bus>,
    /// Cancelled when the node starts to drain: it stops accepting and
    /// answers `/readyz` 503.
    pub shutdown: CancellationToken,
    /// Cancelled once the drain has flushed the hub: WebSocket connections
    /// close with 1001 then (after their queues), so what was delivered to
    /// the node before the drain reaches them.
    pub closing: CancellationToken,
    /// Connections and upgrades, awaited when draining.
    pub tracker: TaskTracker,
    pub prometheus: PrometheusHandle,
    /// Connection caps, origins, the memory budget.
    pub admission: Arc<admission::Admission>,
    /// History and replay chunks read at once, one per core: clients that
    /// ask for large pages share the cores in turn instead of taking them
    /// all from everyone else's messages.
    pub heavy_reads: tokio::sync::Semaphore,
    /// (1.1) `read` events waiting for their second.
    pub read_events: crate::read_events::ReadEvents,
}

/// Permits of [`Node::heavy_reads`]: the cores this process may run on.
pub fn heavy_read_permits() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

impl Node {
    pub fn is_ready(&self) -> bool {
        !self.shutdown.is_cancelled() && self.bus.is_ready() && self.auth.ready()
    }
}
