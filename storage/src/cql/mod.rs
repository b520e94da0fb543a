//! The CQL store (ScyllaDB; Apache Cassandra stands in for tests): history
//! that outlives any node, partitioned by room and time.
//!
//! Schema (created at start with `IF NOT EXISTS`):
//! - `messages`: partition `(room, bucket)`, where `bucket` is the message
//!   id's milliseconds divided by the bucket length, so no partition grows
//!   without bound; clustered by `(ms, seq)` descending, the id's two halves
//!   (a signed `bigint` cannot hold a 64-bit id past 2039), so the newest
//!   page is one read.
//! - `room_buckets`: the buckets a room has data in, newest first, so
//!   paging walks only non-empty buckets and stops at the room's first.
//! - (1.1) `events`, `message_state`, `reactions`, `read_markers`: see
//!   [`events`], which writes and reads them.
//!
//! Every data query is a prepared statement (token- and shard-aware routing
//! in the driver); reads page through the driver's pager. Appends read
//! first, so a redelivered message is a no-op and a different message under
//! an existing id (a bus failover reissuing it) is reported, never written.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use crate::{AppendReport, HistoryStore, Page, StorageError, StoredMessage};

mod events;

/// Reads in flight at once during an append.
const APPEND_CONCURRENCY: usize = 64;
/// Statements in one unlogged batch (one partition each).
const BATCH_STATEMENTS: usize = 100;

/// How the keyspace replicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// One datacenter: `SimpleStrategy` with this factor.
    Simple(u32),
    /// `NetworkTopologyStrategy`, factor per datacenter.
    NetworkTopology(Vec<(String, u32)>),
}

impl Replication {
    /// `simple:1`, or `nts:dc1=3,dc2=3`.
    pub fn parse(text: &str) -> Result<Replication, String> {
        let (kind, rest) = text
            .split_once(':')
            .ok_or("use simple:<factor> or nts:<dc>=<factor>,...")?;
        let factor = |s: &str| {
            s.trim()
                .parse::<u32>()
                .ok()
                .filter(|f| *f > 0)
                .ok_or(format!("bad factor {s:?}"))
        };
        match kind {
            "simple" => Ok(Replication::Simple(factor(rest)?)),
            "nts" => rest
                .split(',')
                .map(|dc| {
                    let (name, f) = dc.split_once('=').ok_or(format!("bad datacenter entry {dc:?}"))?;
                    let name = name.trim();
                    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)) {
                        return Err(format!("bad datacenter name {name:?}"));
                    }
                    Ok((name.to_string(), factor(f)?))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Replication::NetworkTopology),
            other => Err(format!("unknown replication {other:?}: use simple or nts")),
        }
    }

    fn cql(&self) -> String {
        match self {
            Replication::Simple(f) => format!("{{'class': 'SimpleStrategy', 'replication_factor': {f}}}"),
            Replication::NetworkTopology(dcs) => {
                let parts: Vec<String> = dcs.iter().map(|(dc, f)| format!("'{dc}': {f}")).collect();
                format!("{{'class': 'NetworkTopologyStrategy', {}}}", parts.join(", "))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct CqlConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication: Replication,
    /// Time covered by one partition of a room.
    pub bucket: Duration,
}

pub struct CqlStore {
    session: Session,
    bucket_ms: u64,
    insert: PreparedStatement,
    insert_bucket: PreparedStatement,
    get_one: PreparedStatement,
    get_full: PreparedStatement,
    buckets_down: PreparedStatement,
    buckets_up: PreparedStatement,
    newest_in: PreparedStatement,
    before_in: PreparedStatement,
    after_in: PreparedStatement,
    oldest_in: PreparedStatement,
    events: events::Statements,
}

fn cql_err(op: &'static str) -> impl Fn(String) -> StorageError {
    move |detail| StorageError::Cql { op, detail }
}

/// Runs the futures, at most `APPEND_CONCURRENCY` at a time, in order.
async fn bounded<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(futures.len());
    let mut rest = futures.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<F> = rest.by_ref().take(APPEND_CONCURRENCY).collect();
        out.extend(futures_util::future::join_all(chunk).await);
    }
    out
}

/// A row of `messages` as read: ms, seq, sender, ts, body, reply_to.
type Row = (i64, i32, String, i64, String, Option<i64>);

impl CqlStore {
    /// Connects, creates the keyspace and tables if missing, and prepares
    /// every statement.
    pub async fn connect(cfg: &CqlConfig) -> Result<CqlStore, StorageError> {
        if !cfg.keyspace.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || cfg.keyspace.is_empty() {
            return Err(StorageError::Cql {
                op: "config",
                detail: format!("bad keyspace name {:?}", cfg.keyspace),
            });
        }
        let session = SessionBuilder::new()
            .known_nodes(&cfg.nodes)
            .connection_timeout(Duration::from_secs(5))
            .build()
            .await
            .map_err(|e| StorageError::Cql {
                op: "connect",
                detail: format!("{}: {e}", cfg.nodes.join(",")),
            })?;
        let ks = &cfg.keyspace;
        let mut ddl = vec![
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
                cfg.replication.cql()
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.messages (room text, bucket bigint, ms bigint, seq int, \
                 sender text, ts bigint, body text, reply_to bigint, PRIMARY KEY ((room, bucket), ms, seq)) \
                 WITH CLUSTERING ORDER BY (ms DESC, seq DESC)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.room_buckets (room text, bucket bigint, PRIMARY KEY (room, bucket)) \
                 WITH CLUSTERING ORDER BY (bucket DESC)"
            ),
        ];
        ddl.extend(events::ddl(ks));
        for stmt in &ddl {
            session
                .query_unpaged(stmt.as_str(), &[])
                .await
                .map_err(|e| StorageError::Cql {
                    op: "schema",
                    detail: format!("{stmt}: {e}"),
                })?;
        }
        // Tables made before 1.1 gain the column; where it is there already
        // this fails, harmlessly (the statements prepared below need it).
        let _ = session
            .query_unpaged(format!("ALTER TABLE {ks}.messages ADD reply_to bigint"), &[])
            .await;
        session.await_schema_agreement().await.map_err(|e| StorageError::Cql {
            op: "schema agreement",
            detail: e.to_string(),
        })?;
        let cols = "ms, seq, sender, ts, body, reply_to";
        let prepare = |q: String| {
            let session = &session;
            async move {
                session.prepare(q.as_str()).await.map_err(|e| StorageError::Cql {
                    op: "prepare",
                    detail: format!("{q}: {e}"),
                })
            }
        };
        Ok(CqlStore {
            bucket_ms: (cfg.bucket.as_millis() as u64).max(1),
            insert: prepare(format!(
                "INSERT INTO {ks}.messages (room, bucket, ms, seq, sender, ts, body, reply_to) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            insert_bucket: prepare(format!("INSERT INTO {ks}.room_buckets (room, bucket) VALUES (?, ?)")).await?,
            get_one: prepare(format!(
                "SELECT sender, ts, body FROM {ks}.messages WHERE room = ? AND bucket = ? AND ms = ? AND seq = ?"
            ))
            .await?,
            get_full: prepare(format!(
                "SELECT {cols} FROM {ks}.messages WHERE room = ? AND bucket = ? AND ms = ? AND seq = ?"
            ))
            .await?,
            events: events::Statements::prepare(&session, ks).await?,
            buckets_down: prepare(format!(
                "SELECT bucket FROM {ks}.room_buckets WHERE room = ? AND bucket <= ?"
            ))
            .await?,
            buckets_up: prepare(format!(
                "SELECT bucket FROM {ks}.room_buckets WHERE room = ? AND bucket >= ? ORDER BY bucket ASC"
            ))
            .await?,
            newest_in: prepare(format!(
                "SELECT {cols} FROM {ks}.messages WHERE room = ? AND bucket = ? LIMIT ?"
            ))
            .await?,
            before_in: prepare(format!(
                "SELECT {cols} FROM {ks}.messages WHERE room = ? AND bucket = ? AND (ms, seq) < (?, ?) LIMIT ?"
            ))
            .await?,
            after_in: prepare(format!(
                "SELECT {cols} FROM {ks}.messages WHERE room = ? AND bucket = ? AND (ms, seq) > (?, ?) \
                 ORDER BY ms ASC, seq ASC LIMIT ?"
            ))
            .await?,
            oldest_in: prepare(format!(
                "SELECT {cols} FROM {ks}.messages WHERE room = ? AND bucket = ? ORDER BY ms ASC, seq ASC LIMIT ?"
            ))
            .await?,
            session,
        })
    }

    fn split(&self, id: u64) -> (i64, i64, i32) {
        let ms = protocol::id::millis(id);
        ((ms / self.bucket_ms) as i64, ms as i64, protocol::id::seq(id) as i32)
    }

    /// A room's non-empty buckets from `from`, newest first (`down`) or
    /// oldest first, through the driver's pager.
    async fn buckets(&self, room: &str, from: i64, down: bool) -> Result<Vec<i64>, StorageError> {
        let stmt = if down { &self.buckets_down } else { &self.buckets_up };
        let pager = self
            .session
            .execute_iter(stmt.clone(), (room, from))
            .await
            .map_err(|e| cql_err("buckets")(e.to_string()))?;
        let rows = pager
            .rows_stream::<(i64,)>()
            .map_err(|e| cql_err("buckets")(e.to_string()))?;
        rows.map_ok(|(b,)| b)
            .try_collect()
            .await
            .map_err(|e| cql_err("buckets")(e.to_string()))
    }

    async fn rows(
        &self,
        stmt: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        room: &str,
        out: &mut Vec<StoredMessage>,
    ) -> Result<(), StorageError> {
        let pager = self
            .session
            .execute_iter(stmt.clone(), values)
            .await
            .map_err(|e| cql_err("read")(e.to_string()))?;
        let mut rows = pager.rows_stream::<Row>().map_err(|e| cql_err("read")(e.to_string()))?;
        while let Some(row) = rows.next().await {
            let (ms, seq, sender, ts, body, reply_to) = row.map_err(|e| cql_err("read")(e.to_string()))?;
            out.push(StoredMessage {
                room: room.to_string(),
                id: protocol::id::pack(ms as u64, seq as u64),
                from: sender,
                ts: ts as u64,
                body,
                reply_to: reply_to.map(|r| r as u64),
                ..Default::default()
            });
        }
        Ok(())
    }
}

#[async_trait]
impl HistoryStore for CqlStore {
    async fn append(&self, entries: Vec<StoredMessage>) -> Result<AppendReport, StorageError> {
        let started = Instant::now();
        let m = crate::metrics::get();
        let (events, messages): (Vec<&StoredMessage>, Vec<&StoredMessage>) =
            entries.iter().partition(|e| e.change.is_some());
        // What is already stored under these ids?
        let mut reads = Vec::with_capacity(messages.len());
        for &msg in &messages {
            let (bucket, ms, seq) = self.split(msg.id);
            reads.push(async move {
                let e = cql_err("read before write");
                let r = self
                    .session
                    .execute_unpaged(&self.get_one, (&msg.room, bucket, ms, seq))
                    .await
                    .map_err(|x| e(x.to_string()))?;
                let rows = r.into_rows_result().map_err(|x| e(x.to_string()))?;
                rows.maybe_first_row::<(String, i64, String)>()
                    .map_err(|x| e(x.to_string()))
            });
        }
        let existing: Vec<Option<(String, i64, String)>> =
            bounded(reads).await.into_iter().collect::<Result<_, _>>()?;
        let mut report = AppendReport::default();
        let mut partitions: HashMap<(&str, i64), Vec<&StoredMessage>> = HashMap::new();
        for (&msg, found) in messages.iter().zip(existing) {
            match found {
                Some((sender, ts, body)) if sender == msg.from && ts as u64 == msg.ts && body == msg.body => {
                    report.duplicates += 1
                }
                Some(_) => {
                    tracing::warn!(room = %msg.room, id = msg.id, "message id already stored with other content; kept the stored one");
                    report.conflicts.push((msg.room.clone(), msg.id));
                }
                None => partitions
                    .entry((msg.room.as_str(), self.split(msg.id).0))
                    .or_default()
                    .push(msg),
            }
        }
        // Buckets first: a message is never stored where paging cannot find it.
        let mut bucket_writes = Vec::with_capacity(partitions.len());
        for &(room, bucket) in partitions.keys() {
            bucket_writes.push(self.session.execute_unpaged(&self.insert_bucket, (room, bucket)));
        }
        for r in bounded(bucket_writes).await {
            r.map_err(|e| cql_err("insert bucket")(e.to_string()))?;
        }
        let mut batches = Vec::new();
        for msgs in partitions.values() {
            for chunk in msgs.chunks(BATCH_STATEMENTS) {
                let mut batch = Batch::new(BatchType::Unlogged);
                let mut values = Vec::with_capacity(chunk.len());
                for msg in chunk {
                    let (bucket, ms, seq) = self.split(msg.id);
                    batch.append_statement(self.insert.clone());
                    values.push((
                        msg.room.as_str(),
                        bucket,
                        ms,
                        seq,
                        msg.from.as_str(),
                        msg.ts as i64,
                        msg.body.as_str(),
                        msg.reply_to.map(|r| r as i64),
                    ));
                }
                report.written += chunk.len();
                batches.push((batch, values));
            }
        }
        let mut writes = Vec::with_capacity(batches.len());
        for (batch, values) in &batches {
            writes.push(self.session.batch(batch, values));
        }
        for r in bounded(writes).await {
            r.map_err(|e| cql_err("insert")(e.to_string()))?;
        }
        // Events after the messages of the batch: their targets are stored.
        self.append_events(&events, &mut report).await?;
        m.commit_seconds.record(started.elapsed().as_secs_f64());
        m.batch_messages.record(entries.len() as f64);
        m.written.increment(report.written as u64);
        m.duplicates.increment(report.duplicates as u64);
        m.conflicts.increment(report.conflicts.len() as u64);
        Ok(report)
    }

    async fn page(&self, room: &str, page: Page, limit: usize) -> Result<Vec<StoredMessage>, StorageError> {
        let mut out = Vec::with_capacity(limit.min(512));
        if limit == 0 {
            return Ok(out);
        }
        match page {
            Page::Newest | Page::Before(_) => {
                let (start_bucket, bound) = match page {
                    Page::Before(id) => {
                        let (b, ms, seq) = self.split(id);
                        (b, Some((ms, seq)))
                    }
                    _ => (i64::MAX, None),
                };
                for bucket in self.buckets(room, start_bucket, true).await? {
                    let want = (limit - out.len()) as i32;
                    match bound {
                        Some((ms, seq)) if bucket == start_bucket => {
                            self.rows(&self.before_in, (room, bucket, ms, seq, want), room, &mut out)
                                .await?
                        }
                        _ => self.rows(&self.newest_in, (room, bucket, want), room, &mut out).await?,
                    }
                    if out.len() >= limit {
                        break;
                    }
                }
                out.truncate(limit);
                out.reverse();
            }
            Page::After(id) => {
                let (start_bucket, ms, seq) = self.split(id);
                for bucket in self.buckets(room, start_bucket, false).await? {
                    let want = (limit - out.len()) as i32;
                    if bucket == start_bucket {
                        self.rows(&self.after_in, (room, bucket, ms, seq, want), room, &mut out)
                            .await?;
                    } else {
                        self.rows(&self.oldest_in, (room, bucket, want), room, &mut out).await?;
                    }
                    if out.len() >= limit {
                        break;
                    }
                }
                out.truncate(limit);
            }
        }
        self.fold_states(room, &mut out).await?;
        Ok(out)
    }

    async fn last_id(&self, room: &str) -> Result<Option<u64>, StorageError> {
        let message = self.page(room, Page::Newest, 1).await?.pop().map(|m| m.id);
        // Events come after their messages; the newest is past any message.
        let mut since = message.unwrap_or(0);
        loop {
            let events = self.events_after(room, since, 1000).await?;
            match events.last() {
                Some(e) => since = e.id,
                None => break,
            }
            if events.len() < 1000 {
                break;
            }
        }
        Ok(message.max((since > 0).then_some(since)))
    }

    async fn message(&self, room: &str, id: u64) -> Result<Option<StoredMessage>, StorageError> {
        self.one_message(room, id).await
    }

    async fn reactions_by(
        &self,
        room: &str,
        user: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, String)>, StorageError> {
        self.reactions_of(room, user, from, to).await
    }

    async fn entries_after(&self, room: &str, since: u64, limit: usize) -> Result<Vec<StoredMessage>, StorageError> {
        let messages = self.page(room, Page::After(since), limit).await?;
        let events = self.events_after(room, since, limit).await?;
        Ok(crate::fold::merge_entries(messages, events, limit))
    }

    async fn mark_read(&self, room: &str, user: &str, msg: u64, at: u64) -> Result<bool, StorageError> {
        self.move_marker(room, user, msg, at).await
    }

    async fn read_marker(&self, room: &str, user: &str) -> Result<Option<u64>, StorageError> {
        self.marker(room, user).await
    }

    async fn read_markers(&self, room: &str, limit: usize) -> Result<Vec<(String, u64)>, StorageError> {
        self.markers(room, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_settings() {
        assert_eq!(Replication::parse("simple:1"), Ok(Replication::Simple(1)));
        assert_eq!(
            Replication::parse("nts:dc1=3, dc2=2"),
            Ok(Replication::NetworkTopology(vec![("dc1".into(), 3), ("dc2".into(), 2)]))
        );
        assert_eq!(
            Replication::parse("nts:dc1=3").unwrap().cql(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"
        );
        for bad in ["simple:0", "simple", "nts:dc'1=3", "nts:dc1", "other:1"] {
            assert!(Replication::parse(bad).is_err(), "{bad}");
        }
    }

    /// Runs the store suite against the CQL server `scripts/test.sh` starts
    /// (`CHAT_TEST_CQL_NODES`).
    #[tokio::test]
    async fn passes_the_store_suite_on_a_real_cql_server() {
        let Some(nodes) = std::env::var("CHAT_TEST_CQL_NODES").ok().filter(|n| !n.is_empty()) else {
            panic!("CHAT_TEST_CQL_NODES is not set: run the tests with scripts/test.sh, which starts a CQL server");
        };
        let store = CqlStore::connect(&CqlConfig {
            nodes: nodes.split(',').map(str::to_string).collect(),
            keyspace: "chat_suite".into(),
            replication: Replication::Simple(1),
            bucket: Duration::from_secs(86_400),
        })
        .await
        .unwrap();
        crate::suite::run_all(&store).await;
    }
}
