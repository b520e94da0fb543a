//! (1.1) Bans and token revocations on one node: the `moderation` table.
//! Keys: `b` room `\0` user -> the ban's end (ms); `r` user -> the time
//! before which tokens are revoked and until when that is kept (ms each,
//! big-endian). Room names and user ids hold no NUL. Entries past their
//! end are ignored by reads and dropped when the store opens.
//!
//! Writes are rare (an operator acts), so each is its own transaction on a
//! blocking thread rather than a job of the append writer.

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use super::emb;
use crate::StorageError;

pub(super) const MODERATION: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("moderation");

fn ban_key(room: &str, user: &str) -> Vec<u8> {
    [b"b", room.as_bytes(), b"\0", user.as_bytes()].concat()
}

fn revoke_key(user: &str) -> Vec<u8> {
    [b"r", user.as_bytes()].concat()
}

fn u64_at(v: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(at..at + 8)?.try_into().ok()?))
}

/// Until when an entry is kept: a ban's end, a revocation's `keep_until`.
fn kept_until(key: &[u8], v: &[u8]) -> u64 {
    match key.first() {
        Some(b'r') => u64_at(v, 8),
        _ => u64_at(v, 0),
    }
    .unwrap_or(0)
}

/// Drops the entries whose time is over (at open).
pub(super) fn prune(txn: &WriteTransaction, now: u64) -> Result<(), StorageError> {
    let mut t = txn.open_table(MODERATION).map_err(|e| emb("open table", e))?;
    t.retain(|k, v| kept_until(k, v) > now)
        .map_err(|e| emb("prune moderation", e))
}

async fn write(
    db: &std::sync::Arc<Database>,
    f: impl FnOnce(&mut redb::Table<'_, &'static [u8], &'static [u8]>) -> Result<(), StorageError> + Send + 'static,
) -> Result<(), StorageError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let txn = db.begin_write().map_err(|e| emb("begin", e))?;
        {
            let mut t = txn.open_table(MODERATION).map_err(|e| emb("open table", e))?;
            f(&mut t)?;
        }
        txn.commit().map_err(|e| emb("commit", e))
    })
    .await
    .map_err(|e| emb("moderation write task", e))?
}

fn get(db: &Database, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
    use redb::ReadableDatabase;
    let txn = db.begin_read().map_err(|e| emb("begin read", e))?;
    let t = txn.open_table(MODERATION).map_err(|e| emb("open table", e))?;
    Ok(t.get(key).map_err(|e| emb("get", e))?.map(|v| v.value().to_vec()))
}

pub(super) async fn set_ban(
    db: &std::sync::Arc<Database>,
    room: &str,
    user: &str,
    until: u64,
) -> Result<(), StorageError> {
    let key = ban_key(room, user);
    write(db, move |t| {
        t.insert(key.as_slice(), until.to_be_bytes().as_slice())
            .map(drop)
            .map_err(|e| emb("insert", e))
    })
    .await
}

/// A point read, inline: every join asks.
pub(super) fn ban(db: &Database, room: &str, user: &str, now: u64) -> Result<Option<u64>, StorageError> {
    Ok(get(db, &ban_key(room, user))?
        .and_then(|v| u64_at(&v, 0))
        .filter(|&until| until > now))
}

pub(super) async fn set_revoked(
    db: &std::sync::Arc<Database>,
    user: &str,
    before: u64,
    keep_until: u64,
) -> Result<(), StorageError> {
    let key = revoke_key(user);
    write(db, move |t| {
        let (old_before, old_keep) = match t.get(key.as_slice()).map_err(|e| emb("get", e))? {
            Some(v) => (u64_at(v.value(), 0).unwrap_or(0), u64_at(v.value(), 8).unwrap_or(0)),
            None => (0, 0),
        };
        let value = [
            before.max(old_before).to_be_bytes(),
            keep_until.max(old_keep).to_be_bytes(),
        ]
        .concat();
        t.insert(key.as_slice(), value.as_slice())
            .map(drop)
            .map_err(|e| emb("insert", e))
    })
    .await
}

/// A point read, inline: every authentication asks.
pub(super) fn revoked(db: &Database, user: &str, now: u64) -> Result<Option<u64>, StorageError> {
    Ok(get(db, &revoke_key(user))?.and_then(|v| {
        let (before, keep) = (u64_at(&v, 0)?, u64_at(&v, 8)?);
        (keep > now).then_some(before)
    }))
}
