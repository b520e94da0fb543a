//! The persister: drains the shard streams into the history store.
//!
//! One consumer group (`persister`) over every shard stream, so any number
//! of processes (gateway nodes, standalone `dispatcher`s) share the work.
//! Per shard stream, a task reading it with the `persister` consumer
//! group ([`crate::groups`]: own pending entries, then `XAUTOCLAIM` of a
//! stopped consumer's, then new ones), which appends each batch's
//! messages to the store before the batch is acknowledged.
//!
//! Appends are idempotent (keyed by room and id), so an entry delivered
//! twice is stored once; ephemeral entries are acknowledged, not stored.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::StreamId;
use storage::HistoryStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::StoredMessage;
use crate::groups::GroupReader;
use crate::redis_bus::conn::Target;
use crate::redis_bus::streams::{Entry, PERSISTER_GROUP as GROUP, StreamLayout};

#[derive(Debug, Clone)]
pub struct PersisterConfig {
    /// The Redis the streams are in.
    pub target: Target,
    /// Key prefix and stream count: the gateways' values.
    pub streams: StreamLayout,
    /// This consumer's name, unique among persisters (the node id).
    pub consumer: String,
    /// Most entries in one store append.
    pub batch_max: usize,
    /// Longest a batch waits to fill.
    pub batch_wait: Duration,
    /// Entries pending this long on another consumer are taken over.
    pub claim_idle: Duration,
}

/// Runs a persister task per shard stream until `shutdown`; returns when
/// they have all finished their current batch.
pub async fn run(cfg: PersisterConfig, store: Arc<dyn HistoryStore>, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    for stream in 0..cfg.streams.count() {
        tasks.spawn(persist_stream(cfg.clone(), stream, store.clone(), shutdown.clone()));
    }
    tasks.close();
    tasks.wait().await;
}

async fn persist_stream(cfg: PersisterConfig, stream: u32, store: Arc<dyn HistoryStore>, shutdown: CancellationToken) {
    let reader = GroupReader {
        target: cfg.target.clone(),
        key: cfg.streams.key(stream),
        group: GROUP.to_string(),
        consumer: cfg.consumer.clone(),
        // From the start of the stream: everything in it still needs storing.
        start: "0",
        batch_max: cfg.batch_max,
        batch_wait: cfg.batch_wait,
        claim_idle: cfg.claim_idle,
        name: "persister",
    };
    reader
        .run(
            &shutdown,
            |entries: Vec<StreamId>| {
                let store = store.clone();
                Box::pin(async move {
                    let messages: Vec<StoredMessage> =
                        entries.iter().filter_map(|e| Entry::decode(e)?.into_stored()).collect();
                    let report = store.append(messages).await?;
                    if !report.conflicts.is_empty() {
                        // Kept the stored message: a reissued id after a failover.
                        crate::metrics::get()
                            .persist_conflicts
                            .increment(report.conflicts.len() as u64);
                    }
                    let m = crate::metrics::get();
                    m.persisted.increment(entries.len() as u64);
                    m.persist_batch.record(entries.len() as f64);
                    Ok(())
                })
            },
            || crate::metrics::get().persist_errors.increment(1),
        )
        .await;
}
