//! `feed-consumer`: an example backend consumer of the event feed (1.1).
//! It reads every feed stream with a consumer group and prints each entry
//! as one JSON line (`{"stream":N,"id":"<entry id>","k":..,...}`, fields as
//! docs/FEED.md gives them), acknowledging a batch once it is printed.
//! Several of them in one group share the work; entries a stopped one left
//! unacknowledged are taken over after `--claim-idle` (`XAUTOCLAIM`), so a
//! consumer killed at any moment loses nothing (an entry it printed but did
//! not acknowledge is printed again by another).
//!
//! ```sh
//! cargo run -p gateway --bin feed-consumer -- --redis-url redis://127.0.0.1:6379 --group push
//! ```

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dispatcher::BusError;
use dispatcher::feed::consumer::{ConsumerConfig, FeedEntry, FeedHandler, run};
use dispatcher::redis_bus::{StreamLayout, Target};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "feed-consumer",
    about = "Prints the gateway's event feed, read with a consumer group"
)]
struct Args {
    /// The gateways' Redis (`redis://host:port`).
    #[arg(long, env = "GATEWAY_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The gateways' key prefix.
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = "gw")]
    redis_prefix: String,
    /// The gateways' stream shards (one feed stream each).
    #[arg(long, env = "GATEWAY_STREAM_SHARDS", default_value_t = 16)]
    stream_shards: u32,
    /// The consumer group: one per backend purpose (push, search, ...).
    #[arg(long, default_value = "example")]
    group: String,
    /// This consumer's name in the group.
    #[arg(long, default_value = "consumer-1")]
    consumer: String,
    /// Most entries handled (and acknowledged) at once.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Entries another consumer left unacknowledged this long are taken over.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    claim_idle: Duration,
}

/// Prints each entry as a JSON line; flushed before the batch is acknowledged.
struct Print;

impl FeedHandler for Print {
    fn handle(&self, entries: &[FeedEntry]) -> Result<(), BusError> {
        let mut out = std::io::stdout().lock();
        for e in entries {
            let mut line = serde_json::Map::new();
            line.insert("stream".into(), e.stream.into());
            line.insert("id".into(), e.id.clone().into());
            for (k, v) in &e.fields {
                line.insert(k.clone(), v.clone().into());
            }
            writeln!(out, "{}", serde_json::Value::Object(line))
                .map_err(|e| BusError::Unavailable(format!("stdout: {e}")))?;
        }
        out.flush().map_err(|e| BusError::Unavailable(format!("stdout: {e}")))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let cfg = ConsumerConfig {
        target: Target::Single(args.redis_url),
        layout: StreamLayout::new(args.redis_prefix, args.stream_shards),
        group: args.group,
        consumer: args.consumer,
        batch_max: args.batch.max(1),
        batch_wait: Duration::from_millis(20),
        claim_idle: args.claim_idle,
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("feed-consumer: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
        run(cfg, Arc::new(Print), shutdown).await;
    });
    ExitCode::SUCCESS
}
