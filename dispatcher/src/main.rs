//! The `dispatcher` binary: the persister alone, for operators who run it
//! apart from the gateway nodes (start as many as needed: they share the
//! work through one consumer group). Settings use the gateway's names.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dispatcher::persister::{self, PersisterConfig};
use dispatcher::redis_bus::RedisBusConfig;
use dispatcher::redis_conn::Target;
use storage::{CqlConfig, CqlStore, Replication};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "dispatcher",
    version,
    about = "Persists the gateway's Redis streams into ScyllaDB"
)]
struct Config {
    /// One Redis server (`redis://host:port`).
    #[arg(long, env = "GATEWAY_REDIS_URL")]
    redis_url: Option<String>,
    /// A Redis Cluster instead (comma-separated URLs).
    #[arg(long, env = "GATEWAY_REDIS_CLUSTER_NODES", value_delimiter = ',')]
    redis_cluster_nodes: Vec<String>,
    /// Key prefix; the gateways' value.
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "gw")]
    redis_prefix: String,
    /// Shard streams; the gateways' value.
    #[arg(long, env = "GATEWAY_STREAM_SHARDS", default_value_t = 16)]
    stream_shards: u32,
    /// ScyllaDB contact points (comma-separated host:port).
    #[arg(long, env = "GATEWAY_SCYLLA_NODES", value_delimiter = ',', required = true)]
    scylla_nodes: Vec<String>,
    #[arg(long, env = "GATEWAY_SCYLLA_KEYSPACE", default_value = "chat")]
    scylla_keyspace: String,
    /// `simple:<factor>` or `nts:<dc>=<factor>,...`.
    #[arg(long, env = "GATEWAY_SCYLLA_REPLICATION", default_value = "simple:1")]
    scylla_replication: String,
    #[arg(long, env = "GATEWAY_SCYLLA_BUCKET", default_value = "1day", value_parser = humantime::parse_duration)]
    scylla_bucket: Duration,
    /// Consumer name, unique among persisters; keep it across restarts so
    /// a restarted dispatcher finishes its own pending entries at once.
    #[arg(long, env = "DISPATCHER_CONSUMER")]
    consumer: Option<String>,
    #[arg(long, env = "GATEWAY_PERSISTER_BATCH", default_value_t = 512)]
    persister_batch: usize,
    #[arg(long, env = "GATEWAY_PERSISTER_WAIT", default_value = "50ms", value_parser = humantime::parse_duration)]
    persister_wait: Duration,
    #[arg(long, env = "GATEWAY_PERSISTER_CLAIM_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    persister_claim_idle: Duration,
    /// `human` or `json` logs.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", default_value = "human")]
    log_format: String,
}

fn main() -> ExitCode {
    let c = match Config::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("dispatcher: bad configuration: {e}");
            return ExitCode::from(64);
        }
    };
    let target = match (&c.redis_url, c.redis_cluster_nodes.is_empty()) {
        (Some(url), true) => Target::Single(url.clone()),
        (None, false) => Target::Cluster(c.redis_cluster_nodes.clone()),
        _ => {
            eprintln!("dispatcher: bad configuration: redis_url: set exactly one of redis_url and redis_cluster_nodes");
            return ExitCode::from(64);
        }
    };
    let replication = match Replication::parse(&c.scylla_replication) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dispatcher: bad configuration: scylla_replication: {e}");
            return ExitCode::from(64);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if c.log_format == "json" {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let consumer = c
        .consumer
        .clone()
        .unwrap_or_else(|| format!("dispatcher-{:08x}", rand::random::<u32>()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let store = match CqlStore::connect(&CqlConfig {
            nodes: c.scylla_nodes.clone(),
            keyspace: c.scylla_keyspace.clone(),
            replication,
            bucket: c.scylla_bucket,
        })
        .await
        {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot reach the CQL store");
                return ExitCode::FAILURE;
            }
        };
        let cfg = PersisterConfig {
            bus: RedisBusConfig {
                target,
                prefix: c.redis_prefix.clone(),
                shards: c.stream_shards,
                maxlen: 0,
                max_age: Duration::ZERO,
                node_id: None,
                read_count: 0,
                block: Duration::ZERO,
                trim_every: Duration::ZERO,
                node_ttl: Duration::ZERO,
            },
            consumer: consumer.clone(),
            batch_max: c.persister_batch,
            batch_wait: c.persister_wait,
            claim_idle: c.persister_claim_idle,
        };
        let stop = CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                on_signal.cancel();
            }
        });
        tracing::info!(%consumer, shards = c.stream_shards, "persister running");
        persister::run(cfg, store, stop).await;
        tracing::info!("persister stopped");
        ExitCode::SUCCESS
    })
}
