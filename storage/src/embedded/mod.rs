//! The embedded store: one redb file, `history.redb`, in the data directory.
//!
//! Appends go to one writer thread that commits everything queued since its
//! last commit in a single durable transaction (group commit), so many
//! concurrent senders share one fsync. Reads run on the blocking pool and
//! see every committed append.
//!
//! Tables and their byte layouts are in [`codec`]. (1.1) Events (edits,
//! deletions, reactions) are kept twice, as every store keeps them: in
//! `events`, in the room's order, for `join` with `since`; and folded, in the
//! write that stores them, into the target's row of `state` (and who holds
//! which reaction into `reactions`), so a page of history reads its
//! messages and one state row each, however many events the room has.
//! Bans and token revocations (1.1) are in [`moderation`].

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use self::codec::{
    decode_event, decode_message, decode_read, decode_state, encode_event, encode_message, encode_read, encode_state,
    key, reaction_key, reaction_key_end, split_reaction_key, user_key,
};
use crate::fold::{fold, merge_entries, most_recent_markers, show};
use crate::{AppendReport, HistoryStore, MessageState, Page, StorageError, StoredMessage};

mod codec;
mod moderation;

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;
const MESSAGES: Table = TableDefinition::new("messages");
const EVENTS: Table = TableDefinition::new("events");
const STATE: Table = TableDefinition::new("state");
const REACTIONS: Table = TableDefinition::new("reactions");
const READS: Table = TableDefinition::new("reads");
/// (1.1) Send nonces: keyed hash (16 bytes) -> message id, window end (ms).
const NONCES: Table = TableDefinition::new("nonces");
/// The store's own settings: `nonce-key` (16 random bytes, first open).
const META: Table = TableDefinition::new("meta");
const TABLES: [Table; 8] = [
    MESSAGES,
    EVENTS,
    STATE,
    REACTIONS,
    READS,
    NONCES,
    META,
    moderation::MODERATION,
];
/// Most appends folded into one transaction.
const MAX_GROUP: usize = 256;

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

/// What the writer thread commits.
enum Job {
    Append(Vec<StoredMessage>, Reply<AppendReport>),
    /// (1.1) Moves a read marker forward: room, user, message, at (ms).
    MarkRead(String, String, u64, u64, Reply<bool>),
}

/// Reads in flight at once. Each runs on a blocking thread and holds its
/// page in memory: a flood of history requests waits here rather than
/// spawning threads, and memory, without bound.
const READERS: usize = 4;

pub struct EmbeddedStore {
    db: Arc<Database>,
    readers: Arc<tokio::sync::Semaphore>,
    writer: Option<std_mpsc::Sender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// What send nonces are hashed with: random at the first open, then
    /// the same for the life of the file.
    nonce_key: (u64, u64),
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
        // Create the tables up front so reads never find one missing.
        let txn = db.begin_write().map_err(|e| emb("begin", e))?;
        for t in TABLES {
            txn.open_table(t).map_err(|e| emb("open table", e))?;
        }
        let nonce_key = {
            let mut meta = txn.open_table(META).map_err(|e| emb("open table", e))?;
            let stored = meta
                .get(b"nonce-key".as_slice())
                .map_err(|e| emb("get", e))?
                .and_then(|v| <[u8; 16]>::try_from(v.value()).ok());
            let key = match stored {
                Some(k) => k,
                None => {
                    let k: [u8; 16] = rand::random();
                    meta.insert(b"nonce-key".as_slice(), k.as_slice())
                        .map_err(|e| emb("insert", e))?;
                    k
                }
            };
            let half = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
            (half(&key[..8]), half(&key[8..]))
        };
        // Nonces whose window is over: gone at open, so the table holds
        // about one window of them.
        {
            let now = protocol::id::now_ms();
            let mut nonces = txn.open_table(NONCES).map_err(|e| emb("open table", e))?;
            nonces
                .retain(|_, v| codec::decode_nonce(v).is_some_and(|(_, until)| until > now))
                .map_err(|e| emb("prune nonces", e))?;
            moderation::prune(&txn, now)?;
        }
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
            nonce_key,
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

    /// Hands a job to the writer thread and waits for its commit.
    async fn write<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, StorageError> {
        let (tx, rx) = oneshot::channel();
        let writer = self.writer.as_ref().ok_or(StorageError::Closed)?;
        writer.send(job(tx)).map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }
}

fn emb(op: &'static str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Embedded {
        op,
        detail: e.to_string(),
    }
}

fn writer_loop(db: &Database, rx: std_mpsc::Receiver<Job>) {
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
        m.batch_messages.record(
            group
                .iter()
                .map(|j| match j {
                    Job::Append(b, _) => b.len(),
                    Job::MarkRead(..) => 0,
                })
                .sum::<usize>() as f64,
        );
        match result {
            Ok(outcomes) => {
                for (job, outcome) in group.into_iter().zip(outcomes) {
                    match (job, outcome) {
                        (Job::Append(_, reply), Outcome::Appended(report)) => {
                            m.written.increment(report.written as u64);
                            m.duplicates.increment(report.duplicates as u64);
                            m.conflicts.increment(report.conflicts.len() as u64);
                            let _ = reply.send(Ok(report));
                        }
                        (Job::MarkRead(.., reply), Outcome::Moved(moved)) => {
                            let _ = reply.send(Ok(moved));
                        }
                        _ => unreachable!("one outcome per job, in order"),
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded store commit failed");
                for job in group {
                    match job {
                        Job::Append(_, reply) => {
                            let _ = reply.send(Err(emb("commit", &e)));
                        }
                        Job::MarkRead(.., reply) => {
                            let _ = reply.send(Err(emb("commit", &e)));
                        }
                    }
                }
            }
        }
    }
}

enum Outcome {
    Appended(AppendReport),
    Moved(bool),
}

/// The tables one commit writes.
struct Tables<'t> {
    messages: redb::Table<'t, &'static [u8], &'static [u8]>,
    events: redb::Table<'t, &'static [u8], &'static [u8]>,
    state: redb::Table<'t, &'static [u8], &'static [u8]>,
    reactions: redb::Table<'t, &'static [u8], &'static [u8]>,
    reads: redb::Table<'t, &'static [u8], &'static [u8]>,
    nonces: redb::Table<'t, &'static [u8], &'static [u8]>,
}

fn commit_group(db: &Database, group: &[Job]) -> Result<Vec<Outcome>, StorageError> {
    let txn = db.begin_write().map_err(|e| emb("begin", e))?;
    let mut outcomes = Vec::with_capacity(group.len());
    {
        let open = |t| txn.open_table(t).map_err(|e| emb("open table", e));
        let mut t = Tables {
            messages: open(MESSAGES)?,
            events: open(EVENTS)?,
            state: open(STATE)?,
            reactions: open(REACTIONS)?,
            reads: open(READS)?,
            nonces: open(NONCES)?,
        };
        for job in group {
            outcomes.push(match job {
                Job::Append(batch, _) => Outcome::Appended(append_in(&mut t, batch)?),
                Job::MarkRead(room, user, msg, at, _) => Outcome::Moved(mark_read_in(&mut t, room, user, *msg, *at)?),
            });
        }
    }
    txn.commit().map_err(|e| emb("commit", e))?;
    Ok(outcomes)
}

/// Stores one batch: messages into `messages`; events into `events` and,
/// the first time only, folded into their target's state.
fn append_in(t: &mut Tables<'_>, batch: &[StoredMessage]) -> Result<AppendReport, StorageError> {
    let mut report = AppendReport::default();
    for m in batch {
        let k = key(&m.room, m.id);
        let (table, v) = match &m.change {
            None => (&mut t.messages, encode_message(m)),
            Some(c) => (&mut t.events, encode_event(m, c)),
        };
        let existing = table
            .get(k.as_slice())
            .map_err(|e| emb("get", e))?
            .map(|g| g.value() == v.as_slice());
        match existing {
            Some(true) => report.duplicates += 1,
            Some(false) => {
                tracing::warn!(room = %m.room, id = m.id, "entry id already stored with other content; kept the stored one");
                report.conflicts.push((m.room.clone(), m.id));
            }
            None => {
                table.insert(k.as_slice(), v.as_slice()).map_err(|e| emb("insert", e))?;
                if m.change.is_some() {
                    fold_in(t, m)?;
                }
                if let Some((hash, until)) = m.nonce {
                    t.nonces
                        .insert(
                            hash.to_be_bytes().as_slice(),
                            codec::encode_nonce(m.id, until).as_slice(),
                        )
                        .map_err(|e| emb("insert", e))?;
                }
                report.written += 1;
            }
        }
    }
    Ok(report)
}

/// Applies a newly stored event to its target's state. A reaction the user
/// already holds (or an unreaction of one they do not) changes nothing.
fn fold_in(t: &mut Tables<'_>, m: &StoredMessage) -> Result<(), StorageError> {
    let Some(change) = &m.change else { return Ok(()) };
    let sk = key(&m.room, change.target);
    let (state, body) = match t.state.get(sk.as_slice()).map_err(|e| emb("get", e))? {
        Some(v) => decode_state(&m.room, v.value())?,
        None => (MessageState::default(), None),
    };
    let rk = change
        .kind
        .key()
        .map(|k| reaction_key(&m.room, &m.from, change.target, k));
    let held = match &rk {
        Some(k) => t.reactions.get(k.as_slice()).map_err(|e| emb("get", e))?.is_some(),
        None => false,
    };
    let Some(folded) = fold(state, body, m, change, held) else {
        return Ok(());
    };
    match (&rk, folded.holder) {
        (Some(k), Some(true)) => {
            t.reactions
                .insert(k.as_slice(), [].as_slice())
                .map_err(|e| emb("insert", e))?;
        }
        (Some(k), Some(false)) => {
            t.reactions.remove(k.as_slice()).map_err(|e| emb("remove", e))?;
        }
        _ => {}
    }
    let v = encode_state(&folded.state, folded.body.as_deref());
    t.state
        .insert(sk.as_slice(), v.as_slice())
        .map_err(|e| emb("insert", e))?;
    Ok(())
}

fn mark_read_in(t: &mut Tables<'_>, room: &str, user: &str, msg: u64, at: u64) -> Result<bool, StorageError> {
    let k = user_key(room, user);
    let current = match t.reads.get(k.as_slice()).map_err(|e| emb("get", e))? {
        Some(v) => Some(decode_read(room, v.value())?.0),
        None => None,
    };
    if current.is_some_and(|c| c >= msg) {
        return Ok(false);
    }
    t.reads
        .insert(k.as_slice(), encode_read(msg, at).as_slice())
        .map_err(|e| emb("insert", e))?;
    Ok(true)
}

type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// A message with its state folded in: the latest body, `edited`,
/// `deleted` (no body), reaction counts.
fn with_state(state: &ReadTable, mut m: StoredMessage) -> Result<StoredMessage, StorageError> {
    if let Some(v) = state.get(key(&m.room, m.id).as_slice()).map_err(|e| emb("get", e))? {
        let (s, body) = decode_state(&m.room, v.value())?;
        show(&mut m, s, body);
    }
    Ok(m)
}

/// Reads one record: room, key, value.
type Decode = fn(&str, &[u8], &[u8]) -> Result<StoredMessage, StorageError>;

/// Up to `limit` records of `room` in `table` after `after`, ascending.
fn range_after(
    table: &ReadTable,
    room: &str,
    after: u64,
    limit: usize,
    decode: Decode,
) -> Result<Vec<StoredMessage>, StorageError> {
    let mut out = Vec::new();
    if after == u64::MAX {
        return Ok(out);
    }
    let (lo, hi) = (key(room, after + 1), key(room, u64::MAX));
    for e in table
        .range(lo.as_slice()..=hi.as_slice())
        .map_err(|e| emb("range", e))?
        .take(limit)
    {
        let (k, v) = e.map_err(|e| emb("range", e))?;
        out.push(decode(room, k.value(), v.value())?);
    }
    Ok(out)
}

#[async_trait]
impl HistoryStore for EmbeddedStore {
    async fn append(&self, messages: Vec<StoredMessage>) -> Result<AppendReport, StorageError> {
        if messages.is_empty() {
            return Ok(AppendReport::default());
        }
        self.write(|reply| Job::Append(messages, reply)).await
    }

    async fn page(&self, room: &str, page: Page, limit: usize) -> Result<Vec<StoredMessage>, StorageError> {
        let room = room.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(|e| emb("begin read", e))?;
            let table = txn.open_table(MESSAGES).map_err(|e| emb("open table", e))?;
            let state = txn.open_table(STATE).map_err(|e| emb("open table", e))?;
            let lo = key(&room, 0);
            let mut out = match page {
                Page::Newest | Page::Before(_) => {
                    let upper = match page {
                        Page::Before(id) => key(&room, id),
                        // Past every id of the room.
                        _ => key(&room, u64::MAX).into_iter().chain([0]).collect(),
                    };
                    let mut out = Vec::with_capacity(limit.min(512));
                    for e in table
                        .range(lo.as_slice()..upper.as_slice())
                        .map_err(|e| emb("range", e))?
                        .rev()
                        .take(limit)
                    {
                        let (k, v) = e.map_err(|e| emb("range", e))?;
                        out.push(decode_message(&room, k.value(), v.value())?);
                    }
                    out.reverse();
                    out
                }
                Page::After(id) => range_after(&table, &room, id, limit, decode_message)?,
            };
            for m in &mut out {
                *m = with_state(&state, std::mem::take(m))?;
            }
            Ok(out)
        })
        .await
    }

    async fn last_id(&self, room: &str) -> Result<Option<u64>, StorageError> {
        let room = room.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(|e| emb("begin read", e))?;
            // The newest entry, message or event.
            let mut last = None;
            for t in [MESSAGES, EVENTS] {
                let table = txn.open_table(t).map_err(|e| emb("open table", e))?;
                let mut range = table
                    .range(key(&room, 0).as_slice()..=key(&room, u64::MAX).as_slice())
                    .map_err(|e| emb("range", e))?;
                if let Some(e) = range.next_back() {
                    let (k, _) = e.map_err(|e| emb("range", e))?;
                    let id = codec::key_id(k.value());
                    last = last.max(id);
                }
            }
            Ok(last)
        })
        .await
    }

    async fn message(&self, room: &str, id: u64) -> Result<Option<StoredMessage>, StorageError> {
        let room = room.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(|e| emb("begin read", e))?;
            let table = txn.open_table(MESSAGES).map_err(|e| emb("open table", e))?;
            let state = txn.open_table(STATE).map_err(|e| emb("open table", e))?;
            let k = key(&room, id);
            match table.get(k.as_slice()).map_err(|e| emb("get", e))? {
                Some(v) => Ok(Some(with_state(&state, decode_message(&room, &k, v.value())?)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn reactions_by(
        &self,
        room: &str,
        user: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, String)>, StorageError> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.read(move |db| {
            let txn = db.begin_read().map_err(|e| emb("begin read", e))?;
            let table = txn.open_table(REACTIONS).map_err(|e| emb("open table", e))?;
            let (lo, hi) = (reaction_key(&room, &user, from, ""), reaction_key_end(&room, &user, to));
            let mut out = Vec::new();
            for e in table.range(lo.as_slice()..hi.as_slice()).map_err(|e| emb("range", e))? {
                let (k, _) = e.map_err(|e| emb("range", e))?;
                out.extend(split_reaction_key(&room, &user, k.value()));
            }
            Ok(out)
        })
        .await
    }

    async fn entries_after(&self, room: &str, since: u64, limit: usize) -> Result<Vec<StoredMessage>, StorageError> {
        let room = room.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(|e| emb("begin read", e))?;
            let messages = txn.open_table(MESSAGES).map_err(|e| emb("open table", e))?;
            let events = txn.open_table(EVENTS).map_err(|e| emb("open table", e))?;
            let state = txn.open_table(STATE).map_err(|e| emb("open table", e))?;
            let mut out = range_after(&messages, &room, since, limit, decode_message)?;
            for m in &mut out {
                *m = with_state(&state, std::mem::take(m))?;
            }
            let events = range_after(&events, &room, since, limit, decode_event)?;
            Ok(merge_entries(out, events, limit))
        })
        .await
    }

    async fn mark_read(&self, room: &str, user: &str, msg: u64, at: u64) -> Result<bool, StorageError> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.write(|reply| Job::MarkRead(room, user, msg, at, reply)).await
    }

    async fn read_marker(&self, room: &str, user: &str) -> Result<Option<u64>, StorageError> {
        // Every join asks: one point read of a small table, in memory once
        // read, done here rather than queued for a blocking thread (which
        // 10,000 joins at once would wait on, each holding its connection's
        // join state meanwhile).
        let txn = self.db.begin_read().map_err(|e| emb("begin read", e))?;
        let table = txn.open_table(READS).map_err(|e| emb("open table", e))?;
        match table.get(user_key(room, user).as_slice()).map_err(|e| emb("get", e))? {
            Some(v) => Ok(Some(decode_read(room, v.value())?.0)),
            None => Ok(None),
        }
    }

    async fn nonce(&self, hash: u128, now: u64) -> Result<Option<u64>, StorageError> {
        // A point read, inline, like the read marker's: one per send with a
        // nonce the sequencer does not remember (after a restart).
        let txn = self.db.begin_read().map_err(|e| emb("begin read", e))?;
        let table = txn.open_table(NONCES).map_err(|e| emb("open table", e))?;
        Ok(table
            .get(hash.to_be_bytes().as_slice())
            .map_err(|e| emb("get", e))?
            .and_then(|v| codec::decode_nonce(v.value()))
            .filter(|&(_, until)| until > now)
            .map(|(id, _)| id))
    }

    fn nonce_key(&self) -> Option<(u64, u64)> {
        Some(self.nonce_key)
    }

    async fn set_ban(&self, room: &str, user: &str, until: u64) -> Result<(), StorageError> {
        moderation::set_ban(&self.db, room, user, until).await
    }

    async fn ban(&self, room: &str, user: &str, now: u64) -> Result<Option<u64>, StorageError> {
        moderation::ban(&self.db, room, user, now)
    }

    async fn set_revoked(&self, user: &str, before: u64, keep_until: u64) -> Result<(), StorageError> {
        moderation::set_revoked(&self.db, user, before, keep_until).await
    }

    async fn revoked(&self, user: &str, now: u64) -> Result<Option<u64>, StorageError> {
        moderation::revoked(&self.db, user, now)
    }

    async fn read_markers(&self, room: &str, limit: usize) -> Result<Vec<(String, u64)>, StorageError> {
        let room = room.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(|e| emb("begin read", e))?;
            let table = txn.open_table(READS).map_err(|e| emb("open table", e))?;
            let (lo, hi) = (user_key(&room, ""), [room.as_bytes(), &[1]].concat());
            let mut all = Vec::new();
            for e in table.range(lo.as_slice()..hi.as_slice()).map_err(|e| emb("range", e))? {
                let (k, v) = e.map_err(|e| emb("range", e))?;
                let user = std::str::from_utf8(&k.value()[room.len() + 1..])
                    .map_err(|_| emb("decode", format!("corrupt read marker in room {room:?}")))?
                    .to_owned();
                let (msg, at) = decode_read(&room, v.value())?;
                all.push((user, msg, at));
            }
            Ok(most_recent_markers(all, limit))
        })
        .await
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
    async fn bans_and_revocations_last_until_they_end_and_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let now = protocol::id::now_ms();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.set_ban("r", "u", now + 60_000).await.unwrap();
            store.set_ban("r", "gone", now - 1).await.unwrap();
            assert_eq!(store.ban("r", "u", now).await.unwrap(), Some(now + 60_000));
            assert_eq!(store.ban("r", "u", now + 60_000).await.unwrap(), None, "ended");
            assert_eq!(store.ban("other", "u", now).await.unwrap(), None);
            assert_eq!(store.ban("r", "gone", now).await.unwrap(), None);
            // A later revocation moves the time; an earlier one does not.
            store.set_revoked("u", 5_000, now + 60_000).await.unwrap();
            store.set_revoked("u", 4_000, now + 30_000).await.unwrap();
            assert_eq!(store.revoked("u", now).await.unwrap(), Some(5_000));
            store.set_revoked("u", 6_000, now + 10_000).await.unwrap();
            assert_eq!(store.revoked("u", now).await.unwrap(), Some(6_000));
            assert_eq!(
                store.revoked("u", now + 60_000).await.unwrap(),
                None,
                "kept until the latest end"
            );
            store.set_revoked("old", 1, now - 1).await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.ban("r", "u", now).await.unwrap(), Some(now + 60_000));
        assert_eq!(store.revoked("u", now).await.unwrap(), Some(6_000));
        // Ended entries are gone from the table at open.
        let txn = store.db.begin_read().unwrap();
        let t = txn.open_table(moderation::MODERATION).unwrap();
        assert_eq!(t.iter().unwrap().count(), 2);
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
