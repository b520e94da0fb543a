//! Trimming the shard streams to the window, and the persister's lag.
//! Each run also reports what it saw (cluster-wide, so every node reports
//! the same): the streams' length, and with a store the persister group's
//! unread and pending entries and the age of the oldest entry not stored.
//!
//! Without a store, `XADD` trims by count as it appends (see
//! [`super::publish`]); this trims by age and by bytes. With a store, this
//! is the only trimming: by age, about `maxlen` entries and about
//! `max_bytes`, but never past the oldest entry the persister (consumer
//! group [`PERSISTER_GROUP`]) still needs, so an acknowledged message is in
//! the stream or in the store, always.

use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionLike;

use super::conn::redis_error;
use super::streams::{PERSISTER_GROUP, StreamLayout, entry_id, flat_map, lookup, parse_entry_id};
use super::window::StreamInfo;
use crate::BusError;

pub(crate) struct Trimmer {
    pub(crate) layout: StreamLayout,
    /// Approximate entries kept per stream.
    pub(crate) maxlen: usize,
    /// Entries older than this go (zero: by count only).
    pub(crate) max_age: Duration,
    /// Approximate bytes kept per stream, as Redis counts them (`MEMORY
    /// USAGE`); zero: no byte bound.
    pub(crate) max_bytes: u64,
    /// A persister stores the streams: keep what it has not stored.
    pub(crate) with_store: bool,
}

impl Trimmer {
    /// Trims every shard stream once.
    pub(crate) async fn run(&self, conn: &mut impl ConnectionLike) -> Result<(), BusError> {
        let age_cut = if self.max_age.is_zero() {
            0
        } else {
            protocol::id::pack(
                protocol::id::now_ms().saturating_sub(self.max_age.as_millis() as u64),
                0,
            )
        };
        let (mut lag, mut pending, mut oldest_unstored, mut length) = (0, 0, None::<u64>, 0);
        for index in 0..self.layout.count() {
            let key = self.layout.key(index);
            let Some(info) = StreamInfo::read(conn, &key).await? else {
                continue;
            };
            length += info.length;
            let mut cut = age_cut.max(self.bytes_cut(conn, &key, &info).await?);
            if self.with_store {
                cut = cut.max(keep_newest(&info, self.maxlen as u64, info.length));
                match persisted_below(conn, &key).await? {
                    Some(group) => {
                        cut = cut.min(group.safe);
                        lag += group.behind;
                        pending += group.pending;
                        if let Some(id) = group.oldest_unstored {
                            oldest_unstored = Some(oldest_unstored.map_or(id, |o| o.min(id)));
                        }
                    }
                    // No persister has read this stream yet: keep it all.
                    None => continue,
                }
            }
            if cut > info.first {
                redis::cmd("XTRIM")
                    .arg(&key)
                    .arg("MINID")
                    .arg("~")
                    .arg(entry_id(cut))
                    .query_async::<i64>(conn)
                    .await
                    .map_err(|e| redis_error("XTRIM", e))?;
            }
        }
        let m = crate::metrics::get();
        if self.with_store {
            m.persister_lag.set(lag as f64);
            m.persister_pending.set(pending as f64);
            let age_ms =
                oldest_unstored.map_or(0, |id| protocol::id::now_ms().saturating_sub(protocol::id::millis(id)));
            m.persister_lag_seconds.set(age_ms as f64 / 1000.0);
        }
        m.stream_entries.set(length as f64);
        m.trim_runs.increment(1);
        Ok(())
    }

    /// The id below which the stream fits in `max_bytes`: bodies can be
    /// large (32 KiB by default), so a window counted in entries alone
    /// could hold gigabytes.
    async fn bytes_cut(&self, conn: &mut impl ConnectionLike, key: &str, info: &StreamInfo) -> Result<u64, BusError> {
        if self.max_bytes == 0 {
            return Ok(0);
        }
        let used: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query_async(conn)
            .await
            .map_err(|e| redis_error("MEMORY USAGE", e))?;
        Ok(keep_newest(info, self.max_bytes, used.unwrap_or(0)))
    }
}

/// The id below which about `keep` of `total` (entries, or bytes) remain,
/// the newest: ids are timestamps, so the cut between the first and the
/// last entry is proportional to the excess. 0 when nothing is over.
fn keep_newest(info: &StreamInfo, keep: u64, total: u64) -> u64 {
    if total <= keep {
        return 0;
    }
    let (first, last) = (protocol::id::millis(info.first), protocol::id::millis(info.last));
    let excess = total - keep;
    let ms = first + (last.saturating_sub(first) as u128 * excess as u128 / total as u128) as u64;
    protocol::id::pack(ms, 0)
}

/// What the persister group has done with one stream.
struct GroupState {
    /// The lowest id the persister still needs (everything below is stored).
    safe: u64,
    /// Entries it has not read yet.
    behind: u64,
    /// Entries it read and has not acknowledged yet.
    pending: u64,
    /// The oldest entry not stored yet, if any.
    oldest_unstored: Option<u64>,
}

/// The persister group's state on stream `key`; `None` before any
/// persister has read it.
async fn persisted_below(conn: &mut impl ConnectionLike, key: &str) -> Result<Option<GroupState>, BusError> {
    let groups: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(|e| redis_error("XINFO GROUPS", e))?;
    let Value::Array(groups) = groups else { return Ok(None) };
    for g in groups {
        let fields = flat_map(g);
        let text = |name: &str| lookup::<String>(&fields, name);
        if text("name").as_deref() != Some(PERSISTER_GROUP) {
            continue;
        }
        let delivered = text("last-delivered-id")
            .and_then(|id| parse_entry_id(&id))
            .unwrap_or(0);
        let pending: u64 = text("pending").and_then(|p| p.parse().ok()).unwrap_or(0);
        let behind: u64 = text("lag").and_then(|p| p.parse().ok()).unwrap_or(0);
        if pending == 0 {
            // The oldest entry not stored is the first one not read yet.
            let oldest_unstored = match behind {
                0 => None,
                _ => first_after(conn, key, delivered).await?,
            };
            return Ok(Some(GroupState {
                safe: delivered + 1,
                behind,
                pending,
                oldest_unstored,
            }));
        }
        let summary: Value = redis::cmd("XPENDING")
            .arg(key)
            .arg(PERSISTER_GROUP)
            .query_async(conn)
            .await
            .map_err(|e| redis_error("XPENDING", e))?;
        let oldest = match summary {
            Value::Array(parts) => parts
                .get(1)
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()),
            _ => None,
        };
        let oldest = oldest.and_then(|id| parse_entry_id(&id)).unwrap_or(0);
        return Ok(Some(GroupState {
            safe: oldest.min(delivered + 1),
            behind,
            pending,
            oldest_unstored: Some(oldest),
        }));
    }
    Ok(None)
}

/// The id of the first entry of `key` after `id`, if there is one.
async fn first_after(conn: &mut impl ConnectionLike, key: &str, id: u64) -> Result<Option<u64>, BusError> {
    let reply: Value = redis::cmd("XRANGE")
        .arg(key)
        .arg(format!("({}", entry_id(id)))
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(|e| redis_error("XRANGE", e))?;
    let Value::Array(entries) = reply else { return Ok(None) };
    let Some(Value::Array(entry)) = entries.into_iter().next() else {
        return Ok(None);
    };
    Ok(entry
        .into_iter()
        .next()
        .and_then(|v| redis::from_redis_value::<String>(v).ok())
        .and_then(|id| parse_entry_id(&id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_keep_about_the_newest_share() {
        let info = |length, first_ms, last_ms| StreamInfo {
            last_id: String::new(),
            length,
            last: protocol::id::pack(last_ms, 0),
            max_deleted: 0,
            first: protocol::id::pack(first_ms, 0),
            removed_any: false,
        };
        assert_eq!(
            keep_newest(&info(100, 1000, 2000), 100, 100),
            0,
            "within maxlen: no cut"
        );
        // 400 entries over 1000..2000 ms, keep 100: cut three quarters in.
        assert_eq!(
            keep_newest(&info(400, 1000, 2000), 100, 400),
            protocol::id::pack(1750, 0)
        );
        // 8 MB of stream, keep 2 MB: the same three quarters.
        assert_eq!(
            keep_newest(&info(400, 1000, 2000), 2 << 20, 8 << 20),
            protocol::id::pack(1750, 0)
        );
    }
}
