//! [`run`]: one node from start to drained. It builds the node's backend
//! (the bus, the history store, the persister, chosen by the settings),
//! accepts connections until the shutdown token is cancelled, then drains.
//! With `internal_listen` set it also serves the internal listener
//! (`/metrics`, `/healthz`, `/readyz`), bound here (port 0 works; the bound
//! address is logged as `internal listener`), until the drain is over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dispatcher::Bus;
use dispatcher::inprocess::InProcessBus;
use dispatcher::persister::PersisterConfig;
use dispatcher::redis_bus::{RedisBus, UserCounts};
use storage::{CqlStore, EmbeddedStore, HistoryStore, Instrumented, StorageError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::Acceptor;
use crate::config::Settings;
use crate::http::Listener;
use crate::node::Node;
use crate::{admission, auth, http, hub, metrics};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("starting the bus: {0}")]
    Bus(#[from] dispatcher::BusError),
    #[error("listener {0}")]
    Listener(std::io::Error),
    #[error("binding the internal listener {addr}: {source}")]
    InternalListener { addr: SocketAddr, source: std::io::Error },
}

/// How long the persister may take to finish its batch after the drain.
const PERSISTER_STOP: Duration = Duration::from_secs(5);

/// Serves `listener` until `shutdown` is cancelled, then drains: `/readyz`
/// answers 503, new upgrades are refused, clients get close 1001 after
/// their in-flight requests, and the bus finishes what it accepted, all
/// within the configured grace period.
pub async fn run(listener: TcpListener, settings: Settings, shutdown: CancellationToken) -> Result<(), GatewayError> {
    let prometheus = metrics::install();
    let c = &settings.config;
    // Bound before the backend starts, so a taken port fails fast.
    let internal = match c.internal_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::InternalListener { addr, source })?,
        ),
        None => None,
    };
    let hub = hub::Hub::new(
        settings.shards,
        hub::QueueLimits {
            deliveries: c.outbound_queue,
            bytes: c.max_connection_bytes,
        },
    );
    let sink = Arc::new(hub::Router { hub: hub.clone() });
    let backend = Backend::start(&settings, sink).await?;
    // The persister outlives the drain: it stops after the bus is closed.
    let persister_stop = CancellationToken::new();
    let persister = backend
        .persister
        .map(|(cfg, store)| tokio::spawn(dispatcher::persister::run(cfg, store, persister_stop.clone())));
    let addr = listener.local_addr().map_err(GatewayError::Listener)?;
    tracing::info!(
        %addr,
        node = %backend.node_id,
        bus = if settings.cluster.redis.is_some() { "redis" } else { "in-process" },
        store = backend.store,
        persister = persister.is_some(),
        shards = settings.shards,
        anonymous = settings.anonymous,
        jwt = settings.jwt.as_ref().map(|j| j.describe()).unwrap_or_else(|| "off".into()),
        data_dir = %c.data_dir.display(),
        "gateway node serving"
    );
    let grace = c.shutdown_grace;
    let admission = admission::Admission::new(&settings, backend.user_counts);
    let node = Arc::new(Node {
        node_id: backend.node_id,
        auth: auth::Authenticator::new(&settings),
        settings,
        hub,
        bus: backend.bus,
        shutdown: shutdown.clone(),
        closing: CancellationToken::new(),
        tracker: TaskTracker::new(),
        prometheus,
        admission,
        heavy_reads: tokio::sync::Semaphore::new(crate::node::heavy_read_permits()),
        read_events: Default::default(),
    });
    tokio::spawn(crate::read_events::flush(node.clone()));
    let internal = match internal {
        Some(l) => Some(serve_internal(&node, l)?),
        None => None,
    };
    serve(&node, listener, grace).await;
    if let Some(task) = internal {
        task.abort();
    }
    node.bus.close().await;
    stop_persister(persister, persister_stop).await;
    tracing::info!("drained");
    Ok(())
}

/// The bus and store this node runs on.
struct Backend {
    bus: Arc<dyn Bus>,
    /// Configured, leased in Redis, or `gw-0`.
    node_id: String,
    /// Where history comes from (for the start-up log).
    store: &'static str,
    /// The persister to run here, with the store it fills.
    persister: Option<(PersisterConfig, Arc<dyn HistoryStore>)>,
    /// Per-user counts over the cluster (Redis only).
    user_counts: Option<Arc<UserCounts>>,
}

impl Backend {
    /// Redis configured: the Redis bus, with the CQL store behind its window
    /// if there is one (and this node's persister filling it). Otherwise the
    /// in-process bus on the CQL store or the embedded one.
    async fn start(settings: &Settings, sink: Arc<hub::Router>) -> Result<Backend, GatewayError> {
        let c = &settings.config;
        let cluster = &settings.cluster;
        let cql: Option<Arc<dyn HistoryStore>> = match &cluster.scylla {
            Some(cfg) => Some(Arc::new(Instrumented::new(CqlStore::connect(cfg).await?, "cql"))),
            None => None,
        };
        let Some(bus_config) = cluster.bus_config(c.node_id.clone()) else {
            let (store, kind): (Arc<dyn HistoryStore>, _) = match cql {
                Some(store) => (store, "cql"),
                None => (
                    Arc::new(Instrumented::new(EmbeddedStore::open(&c.data_dir)?, "embedded")),
                    "embedded",
                ),
            };
            return Ok(Backend {
                bus: Arc::new(InProcessBus::with_dedupe_window(
                    store,
                    sink,
                    cluster.args.dedupe_window,
                )),
                node_id: c.node_id.clone().unwrap_or_else(|| "gw-0".into()),
                store: kind,
                persister: None,
                user_counts: None,
            });
        };
        let bus = RedisBus::connect(bus_config, sink, cql.clone()).await?;
        let node_id = bus.node_id().to_string();
        let user_counts = Some(bus.user_counts());
        let persister = match cql {
            None => {
                tracing::warn!(
                    entries_per_stream = cluster.args.stream_maxlen,
                    bytes_per_stream = cluster.args.stream_max_bytes,
                    max_age = ?cluster.args.stream_max_age,
                    "Redis without ScyllaDB: history and recovery reach back only as far as the stream window"
                );
                None
            }
            Some(store) if c.persister => cluster.persister_config(node_id.clone()).map(|cfg| (cfg, store)),
            Some(_) => {
                tracing::info!("persister off here: standalone dispatchers store the streams");
                None
            }
        };
        Ok(Backend {
            bus: Arc::new(bus),
            node_id,
            store: if cluster.scylla.is_some() {
                "cql"
            } else {
                "stream window"
            },
            persister,
            user_counts,
        })
    }
}

/// Accepts connections until shutdown, then waits for them to drain, at
/// most `grace` (connections accepted meanwhile only get 503s).
async fn serve(node: &Arc<Node>, listener: TcpListener, grace: Duration) {
    let accept = {
        let node = node.clone();
        async move {
            let acceptor = match Acceptor::new(listener) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "client listener unusable");
                    return;
                }
            };
            let refused = || metrics::connection_refused(admission::Refusal::IpRate.reason());
            loop {
                match acceptor.accept(|ip| node.admission.accept(ip), refused).await {
                    Ok((stream, peer)) => {
                        let conn = http::serve_connection(node.clone(), stream, peer, Listener::Client);
                        // Connections accepted while draining only get 503s;
                        // the drain does not wait for them.
                        if node.shutdown.is_cancelled() {
                            tokio::spawn(conn);
                        } else {
                            node.tracker.spawn(conn);
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
        _ = node.shutdown.cancelled() => {}
    }
    tracing::info!(grace = ?grace, "draining");
    // Deliveries the bus handed over before the drain go into the
    // connections' queues before the connections are told to close.
    let started = tokio::time::Instant::now();
    if tokio::time::timeout(grace, node.hub.flush()).await.is_err() {
        tracing::warn!("the hub did not flush within the grace period");
    }
    node.closing.cancel();
    let grace = grace.saturating_sub(started.elapsed());
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
}

/// Serves the internal listener until the returned task is aborted. Its
/// connections are not tracked: the drain does not wait for a scraper,
/// and `/readyz` there answers 503 while the node drains.
fn serve_internal(node: &Arc<Node>, listener: TcpListener) -> Result<JoinHandle<()>, GatewayError> {
    let addr = listener.local_addr().map_err(GatewayError::Listener)?;
    tracing::info!(%addr, "internal listener");
    let node = node.clone();
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(http::serve_connection(node.clone(), stream, peer, Listener::Internal));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "internal accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn stop_persister(task: Option<JoinHandle<()>>, stop: CancellationToken) {
    stop.cancel();
    if let Some(task) = task {
        let _ = tokio::time::timeout(PERSISTER_STOP, task).await;
    }
}
