//! (1.1) Operator actions in a cluster (see [`crate::control`]): bans and
//! revocations as Redis keys that expire when they end, and every action
//! appended to the control stream, which each node reads from where it
//! left off. A node away from Redis resumes after the last entry it
//! applied, so it still applies what was issued meanwhile (as long as the
//! stream, trimmed to [`CONTROL_MAXLEN`] entries, still holds it).

use std::sync::Arc;
use std::time::Duration;

use redis::streams::StreamReadReply;
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, Pool, Target, redis_error};
use super::streams::StreamLayout;
use crate::backoff::Backoff;
use crate::{BusError, Control, Sink};

/// Entries the control stream keeps (about): far more actions than a
/// node misses in any outage it survives with its connections.
const CONTROL_MAXLEN: usize = 10_000;

/// Sets a revocation unless one with a later time stands; keeps the later
/// expiry. KEYS: the revocation. ARGV: before (ms), keep for (ms).
const REVOKE: &str = "local v = redis.call('GET', KEYS[1]) \
    local before = tonumber(ARGV[1]) \
    if v and tonumber(v) > before then before = tonumber(v) end \
    local keep = tonumber(ARGV[2]) \
    local ttl = redis.call('PTTL', KEYS[1]) \
    if ttl > keep then keep = ttl end \
    redis.call('SET', KEYS[1], before, 'PX', keep) \
    return before";

pub(crate) struct ControlChannel {
    pub(crate) pool: Pool,
    pub(crate) layout: StreamLayout,
}

impl ControlChannel {
    /// Stores what the action leaves behind, then appends it to the stream.
    pub(crate) async fn issue(&self, action: &Control) -> Result<(), BusError> {
        let mut conn = self.pool.get().await?;
        let now = protocol::id::now_ms();
        match action {
            Control::Kick {
                room,
                user,
                ban_until: Some(until),
            } if *until > now => {
                redis::cmd("SET")
                    .arg(self.layout.ban_key(room, user))
                    .arg(*until)
                    .arg("PXAT")
                    .arg(*until)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| redis_error("SET ban", e))?;
            }
            Control::Revoke {
                user,
                before,
                keep_until,
            } if *keep_until > now => {
                redis::cmd("EVAL")
                    .arg(REVOKE)
                    .arg(1)
                    .arg(self.layout.revoked_key(user))
                    .arg(*before)
                    .arg(keep_until - now)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(|e| redis_error("revoke script", e))?;
            }
            _ => {}
        }
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.layout.control_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(CONTROL_MAXLEN)
            .arg("*");
        for (k, v) in action.fields() {
            cmd.arg(k).arg(v);
        }
        cmd.query_async::<String>(&mut conn)
            .await
            .map_err(|e| redis_error("XADD control", e))?;
        Ok(())
    }

    /// Until when `user` is banned from `room`, if now.
    pub(crate) async fn ban(&self, room: &str, user: &str) -> Result<Option<u64>, BusError> {
        let mut conn = self.pool.get().await?;
        let until: Option<u64> = redis::cmd("GET")
            .arg(self.layout.ban_key(room, user))
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("GET ban", e))?;
        Ok(until.filter(|&u| u > protocol::id::now_ms()))
    }

    /// The time before which `user`'s tokens are revoked, if it stands.
    pub(crate) async fn revoked(&self, user: &str) -> Result<Option<u64>, BusError> {
        let mut conn = self.pool.get().await?;
        redis::cmd("GET")
            .arg(self.layout.revoked_key(user))
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("GET revoked", e))
    }

    /// The control stream's last entry id now: where this node's reader
    /// starts, so it applies every action issued after the node started.
    pub(crate) async fn position(&self) -> Result<String, BusError> {
        let mut conn = self.pool.get().await?;
        let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.layout.control_key())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("XREVRANGE control", e))?;
        Ok(last.ids.first().map_or_else(|| "0-0".to_string(), |e| e.id.clone()))
    }
}

/// Reads the control stream from `from` until `cancel`, handing each action
/// to the sink; after an error it resumes after the last entry applied.
pub(crate) async fn read_control(
    target: Target,
    key: String,
    mut from: String,
    block: Duration,
    sink: Arc<dyn Sink>,
    cancel: CancellationToken,
) {
    let mut conn: Option<Conn> = None;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    while !cancel.is_cancelled() {
        let step = async {
            let c = match &mut conn {
                Some(c) => c,
                None => conn.insert(target.connect(block + Duration::from_secs(5)).await?),
            };
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(100)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&key)
                .arg(&from)
                .query_async(c)
                .await
                .map_err(|e| redis_error("XREAD control", e))?;
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                let get = |f: &str| entry.get::<String>(f);
                match Control::from_fields(get) {
                    Some(action) => {
                        tracing::info!(action = action.kind(), "operator action applied");
                        sink.control(&action);
                    }
                    None => tracing::warn!(entry = %entry.id, "control entry not understood: skipped"),
                }
                from = entry.id;
            }
            Ok::<_, BusError>(())
        };
        let result = tokio::select! {
            r = step => r,
            _ = cancel.cancelled() => break,
        };
        match result {
            Ok(()) => backoff.reset(),
            Err(e) => {
                tracing::warn!(error = %e, "control stream reader: will resume after its last entry");
                conn = None;
                if !backoff.wait(&cancel).await {
                    break;
                }
            }
        }
    }
}
