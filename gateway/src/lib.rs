//! A gateway node: WebSocket chat clients in, the bus and the history store
//! behind.
//!
//! - [`config`]: settings from flags, `GATEWAY_*` env and a TOML file.
//! - [`http`]: hyper 1 routes; `/ws` upgrades hand the raw socket to
//!   [`conn`], one small task per connection.
//! - [`hub`]: connection shards with their room indexes, the node-wide room
//!   registry (routing, presence), and the router that turns bus deliveries
//!   into WebSocket frames once per node.
//! - [`ws`]: frame encoding and the idle-buffer-free read path.
//! - [`auth`]: JWT and guests. [`metrics`]: `gateway_*` metrics.
//!
//! - `server`: [`run`] wires them to the bus (`dispatcher`) and the store
//!   (`storage`) and serves until the shutdown token is cancelled, then
//!   drains.

pub mod auth;
pub mod config;
mod conn;
mod http;
pub mod hub;
pub mod metrics;
mod server;
pub mod ws;

use std::sync::Arc;

use dispatcher::Bus;
use metrics_exporter_prometheus::PrometheusHandle;
use storage::StorageError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, ConfigError, Settings};
pub use server::run;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("starting the bus: {0}")]
    Bus(#[from] dispatcher::BusError),
    #[error("listener {0}")]
    Listener(std::io::Error),
}

/// What every connection and handler of one node shares.
pub struct Node {
    pub settings: Settings,
    /// Configured, leased in Redis, or `gw-0`.
    pub node_id: String,
    pub auth: auth::Authenticator,
    pub hub: Arc<hub::Hub>,
    pub bus: Arc<dyn Bus>,
    pub shutdown: CancellationToken,
    /// Connections and upgrades, awaited when draining.
    pub tracker: TaskTracker,
    pub prometheus: PrometheusHandle,
}

impl Node {
    pub fn is_ready(&self) -> bool {
        !self.shutdown.is_cancelled() && self.bus.is_ready()
    }
}
