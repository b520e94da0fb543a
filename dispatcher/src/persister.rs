//! The persister: drains the shard streams into the history store.
//!
//! One consumer group (`persister`) over every shard stream, so any number
//! of processes (gateway nodes, standalone `dispatcher`s) share the work.
//! Per shard stream, a task with a dedicated connection:
//! 1. re-reads this consumer's own pending entries (it died mid-batch),
//! 2. claims entries another consumer left pending too long (`XAUTOCLAIM`),
//! 3. reads new entries (`XREADGROUP ... >`), gathering a batch by size and
//!    by time,
//! 4. appends the batch's messages to the store and only then `XACK`s it.
//!
//! Appends are idempotent (keyed by room and id), so an entry delivered
//! twice is stored once; ephemeral entries are acknowledged, not stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use redis::streams::{StreamId, StreamReadReply};
use storage::HistoryStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::redis_bus::conn::{Conn, Target};
use crate::redis_bus::streams::{Entry, PERSISTER_GROUP as GROUP, StreamLayout};
use crate::{BusError, StoredMessage};

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

fn err(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("persister {what}: {e}"))
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
    let key = cfg.streams.key(stream);
    let mut conn: Option<Conn> = None;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    // Own pending entries first: after a crash they were read but not acked.
    let mut own_pending = true;
    let mut last_claim = Instant::now() - cfg.claim_idle;
    while !shutdown.is_cancelled() {
        let step = async {
            let c = match &mut conn {
                Some(c) => c,
                None => {
                    let mut c = cfg.target.connect(cfg.batch_wait + Duration::from_secs(5)).await?;
                    ensure_group(&mut c, &key).await?;
                    conn.insert(c)
                }
            };
            let entries = if own_pending {
                let e = read_group(c, &cfg, &key, "0", None).await?;
                if e.is_empty() {
                    own_pending = false;
                }
                e
            } else if last_claim.elapsed() >= cfg.claim_idle / 2 {
                last_claim = Instant::now();
                claim(c, &cfg, &key).await?
            } else {
                gather(c, &cfg, &key).await?
            };
            if entries.is_empty() {
                return Ok::<_, BusError>(());
            }
            let messages: Vec<StoredMessage> = entries.iter().filter_map(|e| Entry::decode(e)?.into_stored()).collect();
            let report = store.append(messages).await?;
            if !report.conflicts.is_empty() {
                // Kept the stored message: a reissued id after a failover.
                crate::metrics::get()
                    .persist_conflicts
                    .increment(report.conflicts.len() as u64);
            }
            let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
            redis::cmd("XACK")
                .arg(&key)
                .arg(GROUP)
                .arg(&ids)
                .query_async::<i64>(c)
                .await
                .map_err(|e| err("XACK", e))?;
            let m = crate::metrics::get();
            m.persisted.increment(entries.len() as u64);
            m.persist_batch.record(entries.len() as f64);
            Ok(())
        };
        let result = tokio::select! {
            r = step => r,
            _ = shutdown.cancelled() => break,
        };
        match result {
            Ok(()) => backoff.reset(),
            Err(e) => {
                crate::metrics::get().persist_errors.increment(1);
                tracing::warn!(stream, error = %e, "persister: will retry; unacknowledged entries stay pending");
                conn = None;
                own_pending = true;
                if !backoff.wait(&shutdown).await {
                    break;
                }
            }
        }
    }
}

async fn ensure_group(c: &mut Conn, key: &str) -> Result<(), BusError> {
    // From the start of the stream: everything in it still needs storing.
    let r: Result<Value, _> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(c)
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(err("XGROUP CREATE", e)),
    }
}

async fn read_group(
    c: &mut Conn,
    cfg: &PersisterConfig,
    key: &str,
    from: &str,
    block: Option<Duration>,
) -> Result<Vec<StreamId>, BusError> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(GROUP)
        .arg(&cfg.consumer)
        .arg("COUNT")
        .arg(cfg.batch_max);
    if let Some(b) = block {
        cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
    }
    cmd.arg("STREAMS").arg(key).arg(from);
    let reply: Option<StreamReadReply> = cmd.query_async(c).await.map_err(|e| err("XREADGROUP", e))?;
    Ok(reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default())
}

/// New entries: blocks for the first, then keeps reading until the batch
/// is full or `batch_wait` has passed.
async fn gather(c: &mut Conn, cfg: &PersisterConfig, key: &str) -> Result<Vec<StreamId>, BusError> {
    let mut batch = read_group(c, cfg, key, ">", Some(Duration::from_secs(2))).await?;
    let deadline = Instant::now() + cfg.batch_wait;
    while !batch.is_empty() && batch.len() < cfg.batch_max {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let more = read_group(c, cfg, key, ">", Some(left)).await?;
        if more.is_empty() {
            break;
        }
        batch.extend(more);
    }
    Ok(batch)
}

/// Takes over entries left pending by consumers that stopped.
async fn claim(c: &mut Conn, cfg: &PersisterConfig, key: &str) -> Result<Vec<StreamId>, BusError> {
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(key)
        .arg(GROUP)
        .arg(&cfg.consumer)
        .arg(cfg.claim_idle.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(cfg.batch_max)
        .query_async(c)
        .await
        .map_err(|e| err("XAUTOCLAIM", e))?;
    // [next-cursor, [[id, [k, v, ...]], ...], deleted-ids]
    let Value::Array(parts) = reply else {
        return Ok(Vec::new());
    };
    let Some(entries) = parts.into_iter().nth(1) else {
        return Ok(Vec::new());
    };
    let claimed: StreamReadReply = redis::from_redis_value(Value::Array(vec![Value::Array(vec![
        Value::BulkString(key.as_bytes().to_vec()),
        entries,
    ])]))
    .map_err(|e| err("XAUTOCLAIM reply", e))?;
    let ids: Vec<StreamId> = claimed.keys.into_iter().flat_map(|k| k.ids).collect();
    if !ids.is_empty() {
        tracing::info!(
            count = ids.len(),
            "persister: claimed entries a stopped consumer left pending"
        );
    }
    Ok(ids)
}
