//! The embedded store: one redb file, `history.redb`, in the data directory.
//!
//! Appends go to one writer thread that commits everything queued since its
//! last commit in a single durable transaction (group commit), so many
//! concurrent senders share one fsync. Reads run on the blocking pool and
//! see every committed append.
//!
//! Keys are `room ++ 0x00 ++ id (big-endian)`: room names never contain a
//! zero byte, so a room's messages are one contiguous, id-ordered range.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::{AppendReport, HistoryStore, Page, StorageError, StoredMessage};

const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
/// Most appends folded into one transaction.
const MAX_GROUP: usize = 256;

type AppendReply = oneshot::Sender<Result<AppendReport, StorageError>>;

/// Reads in flight at once. Each runs on a blocking thread and holds its
/// page in memory: a flood of history requests waits here rather than
/// spawning threads, and memory, without bound.
const READERS: usize = 4;

pub struct EmbeddedStore {
    db: Arc<Database>,
    readers: Arc<tokio::sync::Semaphore>,
    writer: Option<std_mpsc::Sender<(Vec<StoredMessage>, AppendReply)>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedStore {
    /// Finishes queued appends and releases the file, so the same data
    /// directory can be opened again at once (a restart in one process).
    fn drop(&mut self) {
        self.writer.take();
        if let Some(t) = self.writer_thread.take() {
            let _ = t.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, recovering it after a crash.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let path = dir.join("history.redb");
        let open_err = |e: redb::DatabaseError| StorageError::Open {
            path: path.display().to_string(),
            source: Box::new(e),
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))?;
        let db = Arc::new(Database::create(&path).map_err(open_err)?);
        // Create the table up front so reads never find it missing.
        let txn = db.begin_write().map_err(|e| emb("begin", e))?;
        txn.open_table(MESSAGES).map_err(|e| emb("open table", e))?;
        txn.commit().map_err(|e| emb("commit", e))?;

        let (tx, rx) = std_mpsc::channel();
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || writer_loop(&writer_db, rx))
            .map_err(|e| emb("spawning the writer thread", e))?;
        Ok(EmbeddedStore {
            db,
            readers: Arc::new(tokio::sync::Semaphore::new(READERS)),
            writer: Some(tx),
            writer_thread: Some(thread),
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let db = self.db.clone();
        let permit = self
            .readers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&db)
        })
        .await
        .map_err(|e| emb("read task", e))?
    }
}

fn emb(op: &'static str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Embedded {
        op,
        detail: e.to_string(),
    }
}

fn key(room: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(room.len() + 9);
    k.extend_from_slice(room.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Value layout: ts (u64 BE), from length (u16 BE, top bit set when a
/// `reply_to` follows the sender), from, [reply_to (u64 BE)], body.
/// Records written before 1.1 have the bit clear and read as before.
fn encode_value(m: &StoredMessage) -> Vec<u8> {
    let mut v = Vec::with_capacity(18 + m.from.len() + m.body.len());
    v.extend_from_slice(&m.ts.to_be_bytes());
    let flag = if m.reply_to.is_some() { REPLY_FLAG } else { 0 };
    v.extend_from_slice(&(m.from.len() as u16 | flag).to_be_bytes());
    v.extend_from_slice(m.from.as_bytes());
    if let Some(r) = m.reply_to {
        v.extend_from_slice(&r.to_be_bytes());
    }
    v.extend_from_slice(m.body.as_bytes());
    v
}

/// Marks a `reply_to` in the sender length (user ids are far shorter).
const REPLY_FLAG: u16 = 0x8000;

fn decode(room: &str, k: &[u8], v: &[u8]) -> Result<StoredMessage, StorageError> {
    let bad = || emb("decode", format!("corrupt record in room {room:?}"));
    let id = u64::from_be_bytes(
        k.get(k.len().wrapping_sub(8)..)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let ts = u64::from_be_bytes(v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let len_field = u16::from_be_bytes(v.get(8..10).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let from_len = (len_field & !REPLY_FLAG) as usize;
    let from = std::str::from_utf8(v.get(10..10 + from_len).ok_or_else(bad)?).map_err(|_| bad())?;
    let mut rest = 10 + from_len;
    let reply_to = if len_field & REPLY_FLAG != 0 {
        let r = u64::from_be_bytes(v.get(rest..rest + 8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        rest += 8;
        Some(r)
    } else {
        None
    };
    let body = std::str::from_utf8(v.get(rest..).ok_or_else(bad)?).map_err(|_| bad())?;
    Ok(StoredMessage {
        room: room.to_owned(),
        id,
        from: from.to_owned(),
        ts,
        body: body.to_owned(),
        reply_to,
    })
}

fn writer_loop(db: &Database, rx: std_mpsc::Receiver<(Vec<StoredMessage>, AppendReply)>) {
    let m = crate::metrics::get();
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = commit_group(db, &group);
        m.commit_seconds.record(started.elapsed().as_secs_f64());
        m.batch_messages
            .record(group.iter().map(|(b, _)| b.len()).sum::<usize>() as f64);
        match result {
            Ok(reports) => {
                for ((_, reply), report) in group.into_iter().zip(reports) {
                    m.written.increment(report.written as u64);
                    m.duplicates.increment(report.duplicates as u64);
                    m.conflicts.increment(report.conflicts.len() as u64);
                    let _ = reply.send(Ok(report));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded store commit failed");
                for (_, reply) in group {
                    let _ = reply.send(Err(emb("commit", &e)));
                }
            }
        }
    }
}

fn commit_group(db: &Database, group: &[(Vec<StoredMessage>, AppendReply)]) -> Result<Vec<AppendReport>, StorageError> {
    let txn = db.begin_write().map_err(|e| emb("begin", e))?;
    let mut reports = Vec::with_capacity(group.len());
    {
        let mut table = txn.open_table(MESSAGES).map_err(|e| emb("open table", e))?;
        for (batch, _) in group {
            let mut report = AppendReport::default();
            for m in batch {
                let k = key(&m.room, m.id);
                let v = encode_value(m);
                let existing = table
                    .get(k.as_slice())
                    .map_err(|e| emb("get", e))?
                    .map(|g| g.value() == v.as_slice());
                match existing {
                    Some(true) => report.duplicates += 1,
                    Some(false) => {
                        tracing::warn!(room = %m.room, id = m.id, "message id already stored with other content; kept the stored one");
                        report.conflicts.push((m.room.clone(), m.id));
                    }
                    None => {
                        table.insert(k.as_slice(), v.as_slice()).map_err(|e| emb("insert", e))?;
                        report.written += 1;
                    }
                }
            }
            reports.push(report);
        }
    }
    txn.commit().map_err(|e| emb("commit", e))?;
    Ok(reports)
}

#[async_trait]
impl HistoryStore for EmbeddedStore {
    async fn append(&self, messages: Vec<StoredMessage>) -> Result<AppendReport, StorageError> {
        if messages.is_empty() {
            return Ok(AppendReport::default());
        }
        let (tx, rx) = oneshot::channel();
        let writer = self.writer.as_ref().ok_or(StorageError::Closed)?;
        writer.send((messages, tx)).map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    async fn page(&self, room: &str, page: Page, limit: usize) -> Result<Vec<StoredMessage>, StorageError> {
        let room = room.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(|e| emb("begin read", e))?;
            let table = txn.open_table(MESSAGES).map_err(|e| emb("open table", e))?;
            let lo = key(&room, 0);
            let hi = key(&room, u64::MAX);
            let mut out = Vec::with_capacity(limit.min(512));
            let mut push = |entry: Result<(redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>), redb::StorageError>| {
                let (k, v) = entry.map_err(|e| emb("range", e))?;
                out.push(decode(&room, k.value(), v.value())?);
                Ok::<_, StorageError>(())
            };
            match page {
                Page::Newest => {
                    for e in table
                        .range(lo.as_slice()..=hi.as_slice())
                        .map_err(|e| emb("range", e))?
                        .rev()
                        .take(limit)
                    {
                        push(e)?;
                    }
                    out.reverse();
                }
                Page::Before(id) => {
                    let upper = key(&room, id);
                    for e in table
                        .range(lo.as_slice()..upper.as_slice())
                        .map_err(|e| emb("range", e))?
                        .rev()
                        .take(limit)
                    {
                        push(e)?;
                    }
                    out.reverse();
                }
                Page::After(id) => {
                    if id == u64::MAX {
                        return Ok(out);
                    }
                    let lower = key(&room, id + 1);
                    for e in table
                        .range(lower.as_slice()..=hi.as_slice())
                        .map_err(|e| emb("range", e))?
                        .take(limit)
                    {
                        push(e)?;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn last_id(&self, room: &str) -> Result<Option<u64>, StorageError> {
        Ok(self.page(room, Page::Newest, 1).await?.pop().map(|m| m.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_store_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        crate::suite::run_all(&store).await;
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.append(crate::suite::messages("keep", 1..=20)).await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let page = store.page("keep", Page::Newest, 100).await.unwrap();
        assert_eq!(page, crate::suite::messages("keep", 1..=20));
    }
}
