//! Reads of the stream window: what `XINFO STREAM` says of a stream
//! ([`StreamInfo`]: does the window still hold everything after an id?),
//! and scans of one room's stored messages forward and backward through
//! its shard stream. With a CQL store, history and replay [`merge`] the
//! store with the window (the window holds what is not stored yet);
//! without one, the window is all a cluster keeps.

use std::sync::Arc;

use redis::Value;
use redis::aio::ConnectionLike;
use redis::streams::{StreamId, StreamRangeReply};

use super::conn::Pool;
use super::conn::redis_error;
use super::streams::{Entry, StreamLayout, entry_id, flat_map, is_stored_in, lookup, parse_entry_id};
use crate::{BusError, Page, Replay, StoredMessage};
use storage::HistoryStore;

/// Entries scanned per range command.
const SCAN_PAGE: usize = 1000;

/// The parts of `XINFO STREAM` the bus uses.
pub(crate) struct StreamInfo {
    /// The last generated id, as Redis spells it (`ms-seq`).
    pub last_id: String,
    pub length: u64,
    /// The newest entry still in the stream (entries are never deleted
    /// one by one, so the last generated one is still there).
    pub last: u64,
    /// Highest id removed by `XDEL` (Redis 7 does not count trimming here).
    pub max_deleted: u64,
    /// The oldest entry still in the stream.
    pub first: u64,
    /// Entries were trimmed or deleted at some point.
    pub removed_any: bool,
}

impl StreamInfo {
    /// Whether every entry after `since` is still in the stream. Trimming
    /// removes from the head, so every trimmed id is below `first`; a
    /// client that saw `first` or later misses nothing.
    pub(crate) fn covers(&self, since: u64) -> bool {
        self.max_deleted <= since && (!self.removed_any || since >= self.first)
    }

    /// What `XINFO STREAM` says of `key` (`None` when it does not exist).
    pub(crate) async fn read(conn: &mut impl ConnectionLike, key: &str) -> Result<Option<StreamInfo>, BusError> {
        let reply: Result<Value, _> = redis::cmd("XINFO").arg("STREAM").arg(key).query_async(conn).await;
        let value = match reply {
            Ok(v) => v,
            Err(e) if e.to_string().contains("no such key") => return Ok(None),
            Err(e) => return Err(redis_error("XINFO", e)),
        };
        if !matches!(value, Value::Array(_) | Value::Map(_)) {
            return Err(redis_error("XINFO", format!("unexpected reply {value:?}")));
        }
        let pairs = flat_map(value);
        let id = |name: &str| {
            lookup::<String>(&pairs, name)
                .and_then(|id| parse_entry_id(&id))
                .unwrap_or(0)
        };
        let length = lookup::<u64>(&pairs, "length").unwrap_or(0);
        Ok(Some(StreamInfo {
            last_id: lookup(&pairs, "last-generated-id").unwrap_or_else(|| "0-0".into()),
            length,
            last: id("last-generated-id"),
            max_deleted: id("max-deleted-entry-id"),
            first: id("recorded-first-entry-id"),
            removed_any: lookup::<u64>(&pairs, "entries-added").unwrap_or(0) > length,
        }))
    }
}

/// History and replay in a cluster: scans of rooms' stored messages in
/// their shard streams, merged with the store when there is one.
pub(crate) struct Window {
    pub(crate) pool: Pool,
    pub(crate) layout: StreamLayout,
    pub(crate) store: Option<Arc<dyn HistoryStore>>,
}

impl Window {
    /// The stored messages after `since`, if there are at most `limit`.
    pub(crate) async fn replay(&self, room: &str, since: u64, limit: usize) -> Result<Replay, BusError> {
        // The window first, then whether it still reaches back to `since`,
        // then the store: the trimmer only cuts what the persister stored,
        // so whatever left the window before it was read is in the store
        // when that is read after it. (The other way round, entries stored
        // and trimmed between the two reads were in neither: a gap.)
        let window = self.scan_forward(room, since, limit, true).await?;
        let covered = self.info(room).await?.is_none_or(|i| i.covers(since));
        let mut messages = match (&self.store, covered) {
            // Nothing after `since` was trimmed before the window was read.
            (_, true) => window,
            // Entries after `since` were trimmed and there is no store: the
            // window cannot close the gap.
            (None, false) => {
                return Ok(Replay {
                    messages: Vec::new(),
                    complete: false,
                });
            }
            // Trimmed entries were stored first; unstored ones are still in
            // the window: together they close the gap.
            (Some(store), false) => {
                let stored = store.entries_after(room, since, limit + 1).await?;
                merge(stored, window, limit + 1, false)
            }
        };
        let complete = messages.len() <= limit;
        messages.truncate(limit);
        Ok(Replay { messages, complete })
    }

    /// A page of history: the store has what was trimmed, the window what
    /// is not stored yet.
    pub(crate) async fn history(&self, room: &str, page: Page, limit: usize) -> Result<Vec<StoredMessage>, BusError> {
        let window = match page {
            Page::Newest => self.scan_backward(room, None, limit).await?,
            Page::Before(b) => self.scan_backward(room, Some(b), limit).await?,
            Page::After(a) => {
                let mut out = self.scan_forward(room, a, limit, false).await?;
                out.truncate(limit);
                out
            }
        };
        match &self.store {
            Some(store) => {
                let stored = store.page(room, page, limit).await?;
                Ok(merge(stored, window, limit, !matches!(page, Page::After(_))))
            }
            None => Ok(window),
        }
    }

    /// What `XINFO STREAM` says of the stream `room` lives in.
    pub(crate) async fn info(&self, room: &str) -> Result<Option<StreamInfo>, BusError> {
        let mut conn = self.pool.get().await?;
        StreamInfo::read(&mut conn, &self.layout.room_key(room)).await
    }

    /// Up to `limit` stored messages of `room` after `after` (exclusive),
    /// ascending, and with `changes` (1.1) the changes among them (what
    /// replay sends; history shows messages only); `limit + 1` found means
    /// there are more.
    pub(crate) async fn scan_forward(
        &self,
        room: &str,
        after: u64,
        limit: usize,
        changes: bool,
    ) -> Result<Vec<StoredMessage>, BusError> {
        let key = self.layout.room_key(room);
        let mut conn = self.pool.get().await?;
        let mut out = Vec::new();
        let mut cursor = format!("({}", entry_id(after));
        loop {
            let page = range(&mut conn, false, &key, &cursor, "+").await?;
            let Some(last) = page.last() else { break };
            cursor = format!("({}", last.id);
            room_messages(room, &page, changes, &mut out);
            if out.len() > limit || page.len() < SCAN_PAGE {
                break;
            }
        }
        out.truncate(limit + 1);
        Ok(out)
    }

    /// Up to `limit` stored messages of `room` before `before` (exclusive,
    /// `None`: the newest), ascending.
    pub(crate) async fn scan_backward(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, BusError> {
        let key = self.layout.room_key(room);
        let mut conn = self.pool.get().await?;
        let mut out = Vec::new();
        let mut cursor = match before {
            Some(0) => return Ok(out),
            Some(b) => format!("({}", entry_id(b)),
            None => "+".to_string(),
        };
        loop {
            let page = range(&mut conn, true, &key, &cursor, "-").await?;
            let Some(last) = page.last() else { break };
            cursor = format!("({}", last.id);
            room_messages(room, &page, false, &mut out);
            if out.len() >= limit || page.len() < SCAN_PAGE {
                break;
            }
        }
        out.truncate(limit);
        out.reverse();
        Ok(out)
    }
}

async fn range(
    conn: &mut impl ConnectionLike,
    rev: bool,
    key: &str,
    start: &str,
    end: &str,
) -> Result<Vec<StreamId>, BusError> {
    let cmd_name = if rev { "XREVRANGE" } else { "XRANGE" };
    let reply: StreamRangeReply = redis::cmd(cmd_name)
        .arg(key)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(SCAN_PAGE)
        .query_async(conn)
        .await
        .map_err(|e| redis_error(cmd_name, e))?;
    Ok(reply.ids)
}

/// Stored entries of `room` in one range page (with `changes`, the
/// changes too).
fn room_messages(room: &str, entries: &[StreamId], changes: bool, out: &mut Vec<StoredMessage>) {
    out.extend(
        entries
            .iter()
            .filter(|e| is_stored_in(e, room, changes))
            .filter_map(|e| Entry::decode(e)?.into_stored()),
    );
}

/// Ascending, without duplicate ids; `newest` keeps the last `limit`.
pub(crate) fn merge(
    mut a: Vec<StoredMessage>,
    b: Vec<StoredMessage>,
    limit: usize,
    newest: bool,
) -> Vec<StoredMessage> {
    a.extend(b);
    a.sort_by_key(|m| m.id);
    a.dedup_by_key(|m| m.id);
    if newest && a.len() > limit {
        a.drain(..a.len() - limit);
    }
    a.truncate(limit);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_coverage() {
        let info = |first, removed_any, max_deleted| StreamInfo {
            last_id: String::new(),
            length: 0,
            last: 0,
            max_deleted,
            first,
            removed_any,
        };
        assert!(info(100, false, 0).covers(5), "nothing ever removed");
        assert!(!info(100, true, 0).covers(5), "trimmed past since");
        assert!(info(100, true, 0).covers(100));
        assert!(info(100, true, 0).covers(150));
        assert!(!info(100, false, 120).covers(110), "an entry after since was deleted");
    }

    #[test]
    fn merge_keeps_one_of_each_in_order() {
        let m = |id| StoredMessage {
            room: "r".into(),
            id,
            from: "u".into(),
            ts: 0,
            body: "1".into(),
            reply_to: None,
            ..Default::default()
        };
        let ids = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(
            ids(merge(vec![m(1), m(3), m(5)], vec![m(3), m(4), m(6)], 10, false)),
            vec![1, 3, 4, 5, 6]
        );
        assert_eq!(
            ids(merge(vec![m(1), m(3), m(5)], vec![m(4), m(6)], 3, false)),
            vec![1, 3, 4]
        );
        assert_eq!(
            ids(merge(vec![m(1), m(3), m(5)], vec![m(4), m(6)], 3, true)),
            vec![4, 5, 6]
        );
    }
}
