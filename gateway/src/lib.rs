//! A gateway node: WebSocket chat clients in, the bus and the history store
//! behind.
//!
//! - [`config`]: settings from flags, `GATEWAY_*` env and a TOML file.
//! - [`Node`] (`node.rs`): what every connection and HTTP handler of one
//!   node shares.
//! - [`http`]: hyper 1 routes; `/ws` upgrades hand the raw socket to
//!   [`conn`], one small task per connection.
//! - [`conn`]: one connection in two layers: the socket (`conn/socket.rs`:
//!   the wait, read bursts, writes, the close) and the request handling
//!   (`conn/session.rs`: state, frames to requests, replies and errors,
//!   rate limits), with the ops one file per family under `conn/ops/`
//!   (auth, rooms, send, history, presence) behind one dispatch table.
//! - [`hub`]: connection shards with their room indexes, the node-wide room
//!   registry (routing, presence), and the router that turns bus deliveries
//!   into WebSocket frames once per node.
//! - [`ws`]: frame encoding and the idle-buffer-free read path.
//! - [`view`]: the one stored-message-to-protocol mapping every encoder
//!   uses.
//! - [`auth`]: JWT and guests. [`metrics`]: `gateway_*` metrics.
//!
//! [`run`] wires them to the bus (`dispatcher`) and the store (`storage`)
//! and serves until the shutdown token is cancelled, then drains.

pub mod auth;
pub mod config;
mod conn;
mod http;
pub mod hub;
pub mod metrics;
mod node;
mod view;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use dispatcher::Bus;
use dispatcher::inprocess::InProcessBus;
use dispatcher::persister::PersisterConfig;
use dispatcher::redis_bus::{RedisBus, RedisBusConfig};
use storage::{CqlStore, EmbeddedStore, HistoryStore, StorageError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, ConfigError, Settings};
pub use node::Node;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("starting the bus: {0}")]
    Bus(#[from] dispatcher::BusError),
    #[error("listener {0}")]
    Listener(std::io::Error),
}

/// Serves `listener` until `shutdown` is cancelled, then drains: `/readyz`
/// answers 503, new upgrades are refused, clients get close 1001 after
/// their in-flight requests, and the bus finishes what it accepted, all
/// within the configured grace period.
pub async fn run(listener: TcpListener, settings: Settings, shutdown: CancellationToken) -> Result<(), GatewayError> {
    let prometheus = metrics::install();
    let c = &settings.config;
    let hub = hub::Hub::new(settings.shards, c.outbound_queue);
    let sink = Arc::new(hub::Router { hub: hub.clone() });
    let cql: Option<Arc<dyn HistoryStore>> = match &settings.scylla {
        Some(cfg) => Some(Arc::new(CqlStore::connect(cfg).await?)),
        None => None,
    };
    let mut persister = None;
    let (bus, node_id): (Arc<dyn Bus>, String) = match &settings.redis {
        Some(target) => {
            let config = RedisBusConfig {
                target: target.clone(),
                prefix: c.redis_prefix.clone(),
                shards: c.stream_shards,
                maxlen: c.stream_maxlen,
                max_age: c.stream_max_age,
                node_id: c.node_id.clone(),
                read_count: 512,
                block: Duration::from_secs(5),
                trim_every: c.stream_trim_interval,
                node_ttl: c.presence_ttl,
            };
            let bus = RedisBus::connect(config.clone(), sink, cql.clone()).await?;
            let id = bus.node_id().to_string();
            match &cql {
                None => tracing::warn!(
                    entries_per_shard = c.stream_maxlen,
                    max_age = ?c.stream_max_age,
                    "Redis without ScyllaDB: history and recovery reach back only as far as the stream window"
                ),
                Some(store) if c.persister => {
                    let cfg = PersisterConfig {
                        bus: config,
                        consumer: id.clone(),
                        batch_max: c.persister_batch,
                        batch_wait: c.persister_wait,
                        claim_idle: c.persister_claim_idle,
                    };
                    persister = Some((cfg, store.clone()));
                }
                Some(_) => tracing::info!("persister off here: standalone dispatchers store the streams"),
            }
            (Arc::new(bus), id)
        }
        None => {
            let store: Arc<dyn HistoryStore> = match cql {
                Some(store) => store,
                None => Arc::new(EmbeddedStore::open(&c.data_dir)?),
            };
            let id = c.node_id.clone().unwrap_or_else(|| "gw-0".into());
            (Arc::new(InProcessBus::new(store, sink)), id)
        }
    };
    // The persister outlives the drain: it stops after the bus is closed.
    let persister_stop = CancellationToken::new();
    let persister_task =
        persister.map(|(cfg, store)| tokio::spawn(dispatcher::persister::run(cfg, store, persister_stop.clone())));
    let addr = listener.local_addr().map_err(GatewayError::Listener)?;
    tracing::info!(
        %addr,
        node = %node_id,
                bus = if settings.redis.is_some() { "redis" } else { "in-process" },
        store = if settings.scylla.is_some() { "cql" } else if settings.redis.is_some() { "stream window" } else { "embedded" },
        persister = persister_task.is_some(),
        shards = settings.shards,
        anonymous = settings.anonymous,
        jwt = settings.jwt.as_ref().map(|j| format!("{:?}", j.algorithm)).unwrap_or_else(|| "off".into()),
        data_dir = %c.data_dir.display(),
        "gateway node serving"
    );
    let grace = c.shutdown_grace;
    let node = Arc::new(Node {
        node_id,
        auth: auth::Authenticator::new(&settings),
        settings,
        hub,
        bus,
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
        prometheus,
    });

    let accept = {
        let node = node.clone();
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        // Connections accepted while draining only get 503s;
                        // the drain does not wait for them.
                        if node.shutdown.is_cancelled() {
                            tokio::spawn(http::serve_connection(node.clone(), stream));
                        } else {
                            node.tracker.spawn(http::serve_connection(node.clone(), stream));
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning on the error.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    };
    tokio::pin!(accept);
    tokio::select! {
        _ = &mut accept => {}
        _ = shutdown.cancelled() => {}
    }
    tracing::info!(grace = ?grace, "draining");
    node.tracker.close();
    let drained = tokio::select! {
        _ = &mut accept => false,
        r = tokio::time::timeout(grace, node.tracker.wait()) => r.is_ok(),
    };
    if !drained {
        tracing::warn!(
            left = node.tracker.len(),
            "grace period over; closing the remaining connections"
        );
    }
    node.bus.close().await;
    persister_stop.cancel();
    if let Some(task) = persister_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    tracing::info!("drained");
    Ok(())
}
