//! (1.1) Edits, deletions, reactions and read markers in the CQL store.
//!
//! Tables (created beside `messages`, same keyspace):
//! - `events`: partition `(room, bucket)` like `messages`, clustered by the
//!   event id's `(ms, seq)` ascending: the room's events in order, for
//!   `join` with `since` (read beside `messages`, merged by id).
//! - `message_state`: one row per changed message, keyed like its
//!   `messages` row: `edited`, `deleted`, the latest `body`, and
//!   `reactions` (key to count). The persister folds each event into it
//!   when it stores the event, so a history page reads its messages and
//!   then the state rows of the same id range: two reads a bucket, however
//!   many events the room has.
//! - `reactions`: partition `(room, user)`, clustered by `(msg, key)`: who
//!   holds which reaction (a reaction counts once per user), and the
//!   reader's own reactions on a page (`me`) in one range read.
//! - `read_markers`: partition `room`, clustered by `user`: `msg` and `at`.
//!   Written with the marker's id as the cell timestamp, so a marker that
//!   lost a race to a later one never overwrites it (last write wins by
//!   timestamp): markers only move forward without a lightweight
//!   transaction.
//!
//! Ids in `target`, `msg` columns are stored order-preserving as signed
//! integers ([`ord`]): `bigint` is signed and ids pass 2^63 in 2039.

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::{CqlStore, cql_err};
use crate::fold::{Folded, fold, most_recent_markers, show};
use crate::{Change, ChangeKind, MessageState, Reaction, StorageError, StoredMessage};

/// An id as a `bigint` that sorts like the id.
pub(super) fn ord(id: u64) -> i64 {
    (id ^ (1 << 63)) as i64
}

fn unord(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

pub(super) fn ddl(ks: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.events (room text, bucket bigint, ms bigint, seq int, target bigint, \
             kind text, sender text, ts bigint, body text, PRIMARY KEY ((room, bucket), ms, seq)) \
             WITH CLUSTERING ORDER BY (ms ASC, seq ASC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.message_state (room text, bucket bigint, ms bigint, seq int, \
             edited bigint, deleted boolean, body text, reactions map<text, int>, \
             PRIMARY KEY ((room, bucket), ms, seq))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.reactions (room text, user text, msg bigint, key text, \
             PRIMARY KEY ((room, user), msg, key))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.read_markers (room text, user text, msg bigint, at bigint, \
             PRIMARY KEY (room, user))"
        ),
    ]
}

/// The prepared statements of this module.
pub(super) struct Statements {
    insert_event: PreparedStatement,
    get_event: PreparedStatement,
    events_after: PreparedStatement,
    events_from: PreparedStatement,
    get_state: PreparedStatement,
    states_in: PreparedStatement,
    set_edit: PreparedStatement,
    set_deleted: PreparedStatement,
    set_count: PreparedStatement,
    get_reaction: PreparedStatement,
    put_reaction: PreparedStatement,
    del_reaction: PreparedStatement,
    reactions_by: PreparedStatement,
    get_read: PreparedStatement,
    put_read: PreparedStatement,
    reads: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Statements, StorageError> {
        let prepare = async |q: String| {
            session.prepare(q.as_str()).await.map_err(|e| StorageError::Cql {
                op: "prepare",
                detail: format!("{q}: {e}"),
            })
        };
        let ev = "ms, seq, target, kind, sender, ts, body";
        let st = "ms, seq, edited, deleted, body, reactions";
        Ok(Statements {
            insert_event: prepare(format!(
                "INSERT INTO {ks}.events (room, bucket, ms, seq, target, kind, sender, ts, body) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            get_event: prepare(format!(
                "SELECT {ev} FROM {ks}.events WHERE room = ? AND bucket = ? AND ms = ? AND seq = ?"
            ))
            .await?,
            events_after: prepare(format!(
                "SELECT {ev} FROM {ks}.events WHERE room = ? AND bucket = ? AND (ms, seq) > (?, ?) LIMIT ?"
            ))
            .await?,
            events_from: prepare(format!(
                "SELECT {ev} FROM {ks}.events WHERE room = ? AND bucket = ? LIMIT ?"
            ))
            .await?,
            get_state: prepare(format!(
                "SELECT {st} FROM {ks}.message_state WHERE room = ? AND bucket = ? AND ms = ? AND seq = ?"
            ))
            .await?,
            states_in: prepare(format!(
                "SELECT {st} FROM {ks}.message_state WHERE room = ? AND bucket = ? \
                 AND (ms, seq) >= (?, ?) AND (ms, seq) <= (?, ?)"
            ))
            .await?,
            set_edit: prepare(format!(
                "UPDATE {ks}.message_state USING TIMESTAMP ? SET edited = ?, body = ? \
                 WHERE room = ? AND bucket = ? AND ms = ? AND seq = ?"
            ))
            .await?,
            set_deleted: prepare(format!(
                "UPDATE {ks}.message_state USING TIMESTAMP ? SET deleted = true \
                 WHERE room = ? AND bucket = ? AND ms = ? AND seq = ?"
            ))
            .await?,
            set_count: prepare(format!(
                "UPDATE {ks}.message_state USING TIMESTAMP ? SET reactions[?] = ? \
                 WHERE room = ? AND bucket = ? AND ms = ? AND seq = ?"
            ))
            .await?,
            get_reaction: prepare(format!(
                "SELECT key FROM {ks}.reactions WHERE room = ? AND user = ? AND msg = ? AND key = ?"
            ))
            .await?,
            put_reaction: prepare(format!(
                "INSERT INTO {ks}.reactions (room, user, msg, key) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            del_reaction: prepare(format!(
                "DELETE FROM {ks}.reactions USING TIMESTAMP ? WHERE room = ? AND user = ? AND msg = ? AND key = ?"
            ))
            .await?,
            reactions_by: prepare(format!(
                "SELECT msg, key FROM {ks}.reactions WHERE room = ? AND user = ? AND msg >= ? AND msg <= ?"
            ))
            .await?,
            get_read: prepare(format!("SELECT msg FROM {ks}.read_markers WHERE room = ? AND user = ?")).await?,
            put_read: prepare(format!(
                "INSERT INTO {ks}.read_markers (room, user, msg, at) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            reads: prepare(format!("SELECT user, msg, at FROM {ks}.read_markers WHERE room = ?")).await?,
        })
    }
}

/// An `events` row: ms, seq, target, kind, sender, ts, body.
type EventRow = (i64, i32, i64, String, String, i64, Option<String>);
/// A `message_state` row: ms, seq, edited, deleted, body, reactions.
type StateRow = (
    i64,
    i32,
    Option<i64>,
    Option<bool>,
    Option<String>,
    Option<BTreeMap<String, i32>>,
);

fn event_of(room: &str, row: EventRow) -> Result<StoredMessage, StorageError> {
    let (ms, seq, target, kind, sender, ts, body) = row;
    let body = body.unwrap_or_default();
    let (kind, body) = match kind.as_str() {
        "edit" => (ChangeKind::Edit, body),
        "delete" => (ChangeKind::Delete, String::new()),
        "react" => (ChangeKind::React(body), String::new()),
        "unreact" => (ChangeKind::Unreact(body), String::new()),
        other => {
            return Err(cql_err("read")(format!(
                "unknown event kind {other:?} in room {room:?}"
            )));
        }
    };
    Ok(StoredMessage {
        room: room.to_owned(),
        id: protocol::id::pack(ms as u64, seq as u64),
        from: sender,
        ts: ts as u64,
        body,
        change: Some(Change {
            target: unord(target),
            kind,
        }),
        ..StoredMessage::default()
    })
}

/// A state row as the state and, when edited, the latest body.
fn state_of(row: StateRow) -> (u64, MessageState, Option<String>) {
    let (ms, seq, edited, deleted, body, reactions) = row;
    let deleted = deleted.unwrap_or(false);
    let state = MessageState {
        edited: edited.map(|e| e as u64).filter(|_| !deleted),
        deleted,
        // A deleted message shows none (counts written after the delete
        // by a late redelivery are kept but hidden).
        reactions: reactions
            .filter(|_| !deleted)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(key, count)| Reaction {
                key,
                count: count as u32,
                me: false,
            })
            .collect(),
    };
    (protocol::id::pack(ms as u64, seq as u64), state, body)
}

impl CqlStore {
    /// Stores events in order: each one new is folded into its target's
    /// state and written to `events`; a redelivered one is a duplicate.
    /// One at a time: two events on one message must fold in order.
    pub(super) async fn append_events(
        &self,
        events: &[&StoredMessage],
        report: &mut crate::AppendReport,
    ) -> Result<(), StorageError> {
        let s = &self.events;
        for m in events {
            let Some(change) = &m.change else { continue };
            let (bucket, ms, seq) = self.split(m.id);
            let e = cql_err("read before write");
            let found = self
                .session
                .execute_unpaged(&s.get_event, (&m.room, bucket, ms, seq))
                .await
                .map_err(|x| e(x.to_string()))?
                .into_rows_result()
                .map_err(|x| e(x.to_string()))?
                .maybe_first_row::<EventRow>()
                .map_err(|x| e(x.to_string()))?;
            if let Some(row) = found {
                // The count is the bus's, not stored with the event.
                let stored = StoredMessage {
                    reaction_count: m.reaction_count,
                    ..event_of(&m.room, row)?
                };
                if stored == **m {
                    report.duplicates += 1;
                } else {
                    tracing::warn!(room = %m.room, id = m.id, "event id already stored with other content; kept the stored one");
                    report.conflicts.push((m.room.clone(), m.id));
                }
                continue;
            }
            // The state first, then the event: a crash between the two
            // leaves the event unstored, and its redelivery folds it again,
            // which changes nothing (the same cells with the same
            // timestamps; without a count from the bus, a reaction finds
            // its `reactions` row as the first fold left it).
            self.fold_event(m, change).await?;
            self.session
                .execute_unpaged(&self.insert_bucket, (&m.room, bucket))
                .await
                .map_err(|x| cql_err("insert bucket")(x.to_string()))?;
            let (kind, key) = (change.kind.op(), change.kind.key());
            let body = key
                .map(str::to_owned)
                .or_else(|| (change.kind == ChangeKind::Edit).then(|| m.body.clone()));
            self.session
                .execute_unpaged(
                    &s.insert_event,
                    (
                        &m.room,
                        bucket,
                        ms,
                        seq,
                        ord(change.target),
                        kind,
                        &m.from,
                        m.ts as i64,
                        body,
                    ),
                )
                .await
                .map_err(|x| cql_err("insert event")(x.to_string()))?;
            report.written += 1;
        }
        Ok(())
    }

    /// Folds one new event into its target's state. Every write carries
    /// the event's id as its cell timestamp, so writes of one message's
    /// events land in id order whatever order they are applied in (two
    /// persisters of one stream apply its entries concurrently): the later
    /// edit's body, the later count of a key, the later hold of a user.
    /// A reaction's count comes with the entry when the bus counted it
    /// (Redis); else (one writer in order: the conformance suite) it is
    /// read and counted here.
    async fn fold_event(&self, m: &StoredMessage, change: &Change) -> Result<(), StorageError> {
        let s = &self.events;
        let (bucket, ms, seq) = self.split(change.target);
        let stamp = (m.id >> 1) as i64;
        let key = match &change.kind {
            ChangeKind::Edit => {
                let values = (stamp, m.ts as i64, m.body.as_str(), m.room.as_str(), bucket, ms, seq);
                return self.exec(&s.set_edit, values).await;
            }
            ChangeKind::Delete => {
                return self
                    .exec(&s.set_deleted, (stamp, m.room.as_str(), bucket, ms, seq))
                    .await;
            }
            ChangeKind::React(k) | ChangeKind::Unreact(k) => k.as_str(),
        };
        let react = matches!(change.kind, ChangeKind::React(_));
        let who = (m.room.as_str(), m.from.as_str(), ord(change.target), key);
        let count = match m.reaction_count {
            Some(n) => n,
            None => {
                let (_, state, body) = match self.state_row(&m.room, change.target).await? {
                    Some(row) => state_of(row),
                    None => (change.target, MessageState::default(), None),
                };
                let e = cql_err("read reaction");
                let held = self
                    .session
                    .execute_unpaged(&s.get_reaction, who)
                    .await
                    .map_err(|x| e(x.to_string()))?
                    .into_rows_result()
                    .map_err(|x| e(x.to_string()))?
                    .rows_num()
                    > 0;
                let Some(Folded { state, .. }) = fold(state, body, m, change, held) else {
                    return Ok(());
                };
                state.reactions.iter().find(|r| r.key == key).map_or(0, |r| r.count)
            }
        };
        if react {
            self.exec(&s.put_reaction, (who.0, who.1, who.2, who.3, stamp)).await?;
        } else {
            self.exec(&s.del_reaction, (stamp, who.0, who.1, who.2, who.3)).await?;
        }
        self.exec(
            &s.set_count,
            (stamp, key, count as i32, m.room.as_str(), bucket, ms, seq),
        )
        .await
    }

    async fn exec(
        &self,
        stmt: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<(), StorageError> {
        self.session
            .execute_unpaged(stmt, values)
            .await
            .map(|_| ())
            .map_err(|x| cql_err("write state")(x.to_string()))
    }

    async fn state_row(&self, room: &str, id: u64) -> Result<Option<StateRow>, StorageError> {
        let (bucket, ms, seq) = self.split(id);
        let e = cql_err("read state");
        self.session
            .execute_unpaged(&self.events.get_state, (room, bucket, ms, seq))
            .await
            .map_err(|x| e(x.to_string()))?
            .into_rows_result()
            .map_err(|x| e(x.to_string()))?
            .maybe_first_row::<StateRow>()
            .map_err(|x| e(x.to_string()))
    }

    /// Folds the current state into a page of messages (ascending): one
    /// range read of `message_state` per bucket the page spans.
    pub(super) async fn fold_states(&self, room: &str, page: &mut [StoredMessage]) -> Result<(), StorageError> {
        let mut i = 0;
        while i < page.len() {
            let bucket = self.split(page[i].id).0;
            let j = i + page[i..].iter().take_while(|m| self.split(m.id).0 == bucket).count();
            let (_, lo_ms, lo_seq) = self.split(page[i].id);
            let (_, hi_ms, hi_seq) = self.split(page[j - 1].id);
            let pager = self
                .session
                .execute_iter(
                    self.events.states_in.clone(),
                    (room, bucket, lo_ms, lo_seq, hi_ms, hi_seq),
                )
                .await
                .map_err(|e| cql_err("read state")(e.to_string()))?;
            let mut rows = pager
                .rows_stream::<StateRow>()
                .map_err(|e| cql_err("read state")(e.to_string()))?;
            while let Some(row) = rows
                .try_next()
                .await
                .map_err(|e| cql_err("read state")(e.to_string()))?
            {
                let (id, state, body) = state_of(row);
                if let Ok(k) = page[i..j].binary_search_by_key(&id, |m| m.id) {
                    show(&mut page[i + k], state, body);
                }
            }
            i = j;
        }
        Ok(())
    }

    pub(super) async fn one_message(&self, room: &str, id: u64) -> Result<Option<StoredMessage>, StorageError> {
        let (bucket, ms, seq) = self.split(id);
        let mut out = Vec::with_capacity(1);
        self.rows(&self.get_full, (room, bucket, ms, seq), room, &mut out)
            .await?;
        let Some(mut m) = out.pop() else { return Ok(None) };
        if let Some(row) = self.state_row(room, id).await? {
            let (_, state, body) = state_of(row);
            show(&mut m, state, body);
        }
        Ok(Some(m))
    }

    pub(super) async fn events_after(
        &self,
        room: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        let mut out = Vec::new();
        let (start_bucket, ms, seq) = self.split(since);
        for bucket in self.buckets(room, start_bucket, false).await? {
            let want = (limit - out.len()) as i32;
            let pager = if bucket == start_bucket {
                self.session
                    .execute_iter(self.events.events_after.clone(), (room, bucket, ms, seq, want))
                    .await
            } else {
                self.session
                    .execute_iter(self.events.events_from.clone(), (room, bucket, want))
                    .await
            }
            .map_err(|e| cql_err("read events")(e.to_string()))?;
            let mut rows = pager
                .rows_stream::<EventRow>()
                .map_err(|e| cql_err("read events")(e.to_string()))?;
            while let Some(row) = rows
                .try_next()
                .await
                .map_err(|e| cql_err("read events")(e.to_string()))?
            {
                out.push(event_of(room, row)?);
            }
            if out.len() >= limit {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    pub(super) async fn reactions_of(
        &self,
        room: &str,
        user: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, String)>, StorageError> {
        let pager = self
            .session
            .execute_iter(self.events.reactions_by.clone(), (room, user, ord(from), ord(to)))
            .await
            .map_err(|e| cql_err("read reactions")(e.to_string()))?;
        pager
            .rows_stream::<(i64, String)>()
            .map_err(|e| cql_err("read reactions")(e.to_string()))?
            .map_ok(|(msg, key)| (unord(msg), key))
            .try_collect()
            .await
            .map_err(|e| cql_err("read reactions")(e.to_string()))
    }

    pub(super) async fn marker(&self, room: &str, user: &str) -> Result<Option<u64>, StorageError> {
        let e = cql_err("read marker");
        Ok(self
            .session
            .execute_unpaged(&self.events.get_read, (room, user))
            .await
            .map_err(|x| e(x.to_string()))?
            .into_rows_result()
            .map_err(|x| e(x.to_string()))?
            .maybe_first_row::<(i64,)>()
            .map_err(|x| e(x.to_string()))?
            .map(|(m,)| unord(m)))
    }

    pub(super) async fn move_marker(&self, room: &str, user: &str, msg: u64, at: u64) -> Result<bool, StorageError> {
        if self.marker(room, user).await?.is_some_and(|c| c >= msg) {
            return Ok(false);
        }
        // The id as the write timestamp: of two racing markers the later id
        // wins whatever order they land in. Ids are below 2^64 and the
        // timestamp is a positive i64, so halve it (order is kept).
        let stamp = (msg >> 1) as i64;
        self.session
            .execute_unpaged(&self.events.put_read, (room, user, ord(msg), at as i64, stamp))
            .await
            .map_err(|e| cql_err("write marker")(e.to_string()))?;
        Ok(true)
    }

    pub(super) async fn markers(&self, room: &str, limit: usize) -> Result<Vec<(String, u64)>, StorageError> {
        let pager = self
            .session
            .execute_iter(self.events.reads.clone(), (room,))
            .await
            .map_err(|e| cql_err("read markers")(e.to_string()))?;
        let all: Vec<(String, u64, u64)> = pager
            .rows_stream::<(String, i64, i64)>()
            .map_err(|e| cql_err("read markers")(e.to_string()))?
            .map_ok(|(user, msg, at)| (user, unord(msg), at as u64))
            .try_collect()
            .await
            .map_err(|e| cql_err("read markers")(e.to_string()))?;
        Ok(most_recent_markers(all, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_their_order_as_bigints() {
        let ids = [0u64, 1, (1 << 63) - 1, 1 << 63, u64::MAX];
        for w in ids.windows(2) {
            assert!(ord(w[0]) < ord(w[1]));
        }
        for id in ids {
            assert_eq!(unord(ord(id)), id);
        }
    }
}
