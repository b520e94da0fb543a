//! The `dispatcher` binary: the persister alone, for operators who run it
//! apart from the gateway nodes (start as many as needed: they share the
//! work through one consumer group). Its settings are the gateway's
//! cluster settings (`dispatcher::settings`: same flags, `GATEWAY_*`
//! variables, config file and validation), plus its consumer name.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use dispatcher::settings::{self, ClusterArgs, EXIT_CONFIG, LogArgs, SettingsError};
use storage::{CqlStore, Instrumented};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "dispatcher",
    version,
    about = "Persists the gateway's Redis shard streams into ScyllaDB (the persister, standalone)"
)]
struct Config {
    /// TOML file with any of these settings; keys are the flag names.
    #[arg(long, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,

    /// Consumer name, unique among persisters; keep it across restarts so
    /// a restarted dispatcher finishes its own pending entries at once.
    /// Unset: `dispatcher-<random>`.
    #[arg(long, env = "DISPATCHER_CONSUMER")]
    consumer: Option<String>,

    /// Serve Prometheus metrics (`gateway_persister_*`, `gateway_storage_*`)
    /// on this address, at any path (e.g. `0.0.0.0:9091`). Unset: none.
    #[arg(long, env = "DISPATCHER_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,

    #[command(flatten)]
    cluster: ClusterArgs,

    #[command(flatten)]
    log: LogArgs,

    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
}

/// The Prometheus exporter with its own HTTP listener, the same buckets as
/// the gateway's, and the metrics' help text.
fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), metrics_exporter_prometheus::BuildError> {
    dispatcher::exporter_builder().with_http_listener(addr).install()?;
    dispatcher::describe_metrics();
    storage::describe_metrics();
    Ok(())
}

fn bad_config(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("dispatcher: bad configuration: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn main() -> ExitCode {
    let c: Config = match settings::load(std::env::args_os()) {
        Ok(c) => c,
        Err(SettingsError::Cli { message, help: true }) => {
            print!("{message}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return bad_config(e),
    };
    let cluster = match c.cluster.validate() {
        Ok(cluster) => cluster,
        Err(e) => return bad_config(e),
    };
    let Some(store_config) = cluster.scylla.clone() else {
        return bad_config(settings::invalid(
            "scylla_nodes",
            "the dispatcher stores into ScyllaDB: set GATEWAY_SCYLLA_NODES",
        ));
    };
    if let Some(name) = &c.consumer
        && (name.is_empty() || name.len() > 64 || name.chars().any(|ch| ch.is_control() || ch == ' '))
    {
        return bad_config(settings::invalid(
            "consumer",
            "must be 1 to 64 characters, without spaces or control characters",
        ));
    }
    let consumer = c
        .consumer
        .clone()
        .unwrap_or_else(|| format!("dispatcher-{:08x}", rand::random::<u32>()));
    let Some(persister) = cluster.persister_config(consumer.clone()) else {
        return bad_config(settings::invalid(
            "redis_url",
            "the dispatcher reads the shard streams: set GATEWAY_REDIS_URL or GATEWAY_REDIS_CLUSTER_NODES",
        ));
    };
    if c.check_config {
        println!("configuration ok: {persister:#?}\n{store_config:#?}");
        return ExitCode::SUCCESS;
    }
    c.log.init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dispatcher: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        if let Some(addr) = c.metrics_listen {
            if let Err(e) = serve_metrics(addr) {
                tracing::error!(%addr, error = %e, "cannot serve metrics");
                return ExitCode::FAILURE;
            }
            tracing::info!(%addr, "metrics listener");
        }
        // (1.1) The streams it reads are the ones the nodes write (checked
        // first: a node that disagrees would write where it never reads).
        let agreed = match persister.target.connect(std::time::Duration::from_secs(5)).await {
            Ok(mut conn) => dispatcher::redis_bus::cluster_keys::agree_stream_keys(&mut conn, &cluster.streams).await,
            Err(e) => Err(e),
        };
        match agreed {
            Ok(()) => {}
            Err(e @ dispatcher::BusError::Config(_)) => {
                tracing::error!(error = %e, "cannot persist");
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reach Redis");
                return ExitCode::FAILURE;
            }
        }
        let store = match CqlStore::connect(&store_config).await {
            Ok(s) => Arc::new(Instrumented::new(s, "cql")),
            Err(e) => {
                tracing::error!(error = %e, "cannot reach the CQL store");
                return ExitCode::FAILURE;
            }
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
        tracing::info!(%consumer, streams = cluster.streams.count(), "persister running");
        dispatcher::persister::run(persister, store, stop).await;
        tracing::info!("persister stopped");
        ExitCode::SUCCESS
    })
}
