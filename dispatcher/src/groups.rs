//! Reading a stream with a consumer group, at least once: the loop the
//! persister and the feed consumers share. Per stream, with a dedicated
//! connection:
//! 1. re-reads this consumer's own pending entries (it died mid-batch),
//! 2. claims entries another consumer left pending too long (`XAUTOCLAIM`),
//! 3. reads new entries (`XREADGROUP ... >`), gathering a batch by size and
//!    by time,
//! 4. hands the batch to the caller and only then `XACK`s it.
//!
//! An error (Redis, or the caller's) leaves the batch unacknowledged; the
//! loop reconnects with backoff and reads its own pending entries again.

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use redis::Value;
use redis::streams::{StreamId, StreamReadReply};
use tokio_util::sync::CancellationToken;

use crate::BusError;
use crate::backoff::Backoff;
use crate::redis_bus::conn::{Conn, Target};

/// One consumer of one stream.
#[derive(Debug, Clone)]
pub struct GroupReader {
    pub target: Target,
    pub key: String,
    pub group: String,
    /// This consumer's name, unique in the group.
    pub consumer: String,
    /// Where a new group starts: `0` (everything the stream holds) or `$`
    /// (what comes from now on).
    pub start: &'static str,
    /// Most entries in one batch.
    pub batch_max: usize,
    /// Longest a batch waits to fill.
    pub batch_wait: Duration,
    /// Entries pending this long on another consumer are taken over.
    pub claim_idle: Duration,
    /// Names the reader in logs.
    pub name: &'static str,
}

fn err(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {e}"))
}

impl GroupReader {
    /// Reads until `shutdown`, handing each batch to `handle` and
    /// acknowledging it when `handle` succeeds; `on_error` hears of every
    /// failed step (for a metric).
    pub async fn run(
        &self,
        shutdown: &CancellationToken,
        handle: impl Fn(Vec<StreamId>) -> BoxFuture<'static, Result<(), BusError>>,
        on_error: impl Fn(),
    ) {
        let mut conn: Option<Conn> = None;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // Own pending entries first: after a crash they were read but not acked.
        let mut own_pending = true;
        let mut last_claim = Instant::now() - self.claim_idle;
        while !shutdown.is_cancelled() {
            let step = async {
                let c = match &mut conn {
                    Some(c) => c,
                    None => {
                        let mut c = self.target.connect(self.batch_wait + Duration::from_secs(5)).await?;
                        self.ensure_group(&mut c).await?;
                        conn.insert(c)
                    }
                };
                let entries = if own_pending {
                    let e = self.read(c, "0", None).await?;
                    if e.is_empty() {
                        own_pending = false;
                    }
                    e
                } else if last_claim.elapsed() >= self.claim_idle / 2 {
                    last_claim = Instant::now();
                    self.claim(c).await?
                } else {
                    self.gather(c).await?
                };
                if entries.is_empty() {
                    return Ok::<_, BusError>(());
                }
                let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
                handle(entries).await?;
                redis::cmd("XACK")
                    .arg(&self.key)
                    .arg(&self.group)
                    .arg(&ids)
                    .query_async::<i64>(c)
                    .await
                    .map_err(|e| err("XACK", e))?;
                Ok(())
            };
            let result = tokio::select! {
                r = step => r,
                _ = shutdown.cancelled() => break,
            };
            match result {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    on_error();
                    tracing::warn!(reader = self.name, key = %self.key, error = %e, "will retry; unacknowledged entries stay pending");
                    conn = None;
                    own_pending = true;
                    if !backoff.wait(shutdown).await {
                        break;
                    }
                }
            }
        }
    }

    async fn ensure_group(&self, c: &mut Conn) -> Result<(), BusError> {
        let r: Result<Value, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(&self.group)
            .arg(self.start)
            .arg("MKSTREAM")
            .query_async(c)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(err("XGROUP CREATE", e)),
        }
    }

    async fn read(&self, c: &mut Conn, from: &str, block: Option<Duration>) -> Result<Vec<StreamId>, BusError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.batch_max);
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&self.key).arg(from);
        let reply: Option<StreamReadReply> = cmd.query_async(c).await.map_err(|e| err("XREADGROUP", e))?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// New entries: blocks for the first, then keeps reading until the
    /// batch is full or `batch_wait` has passed.
    async fn gather(&self, c: &mut Conn) -> Result<Vec<StreamId>, BusError> {
        let mut batch = self.read(c, ">", Some(Duration::from_secs(2))).await?;
        let deadline = Instant::now() + self.batch_wait;
        while !batch.is_empty() && batch.len() < self.batch_max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let more = self.read(c, ">", Some(left)).await?;
            if more.is_empty() {
                break;
            }
            batch.extend(more);
        }
        Ok(batch)
    }

    /// Takes over entries left pending by consumers that stopped.
    async fn claim(&self, c: &mut Conn) -> Result<Vec<StreamId>, BusError> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(self.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(self.batch_max)
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
            Value::BulkString(self.key.as_bytes().to_vec()),
            entries,
        ])]))
        .map_err(|e| err("XAUTOCLAIM reply", e))?;
        let ids: Vec<StreamId> = claimed.keys.into_iter().flat_map(|k| k.ids).collect();
        if !ids.is_empty() {
            tracing::info!(
                reader = self.name,
                count = ids.len(),
                "claimed entries a stopped consumer left pending"
            );
        }
        Ok(ids)
    }
}
