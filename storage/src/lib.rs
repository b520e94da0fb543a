//! Message history for the gateway: one trait, [`HistoryStore`], and its
//! implementations.
//!
//! - [`embedded`]: a durable store in one redb file under the node's data
//!   directory, for a single node with no external services.
//! - [`cql`]: ScyllaDB (or Cassandra) for a cluster, partitioned by room
//!   and time bucket.
//! - [`instrumented`]: any store with its calls timed and failures
//!   counted (`gateway_storage_*` metrics; [`describe_metrics`] gives their
//!   help text).
//! - `suite` (tests only): the conformance tests every store runs, so the
//!   embedded and the CQL store behave the same.
//!
//! This crate knows nothing of the bus or of WebSockets: it stores
//! messages by `(room, id)` and pages them back in ascending id order
//! (ids are `protocol::id`s). (1.1) It also stores events on messages
//! (edits, deletions, reactions), folded at write time into each message's
//! state so a page never scans them, and read markers: `SCHEMA.md` beside
//! this crate lays out the tables of both stores.

#![forbid(unsafe_code)]

pub mod cql;
pub mod embedded;
mod fold;
pub mod instrumented;
mod metrics;
#[cfg(test)]
mod suite;

use async_trait::async_trait;
pub use protocol::event::{Change, ChangeKind, MessageState, Reaction};

pub use cql::{CqlConfig, CqlStore, Replication};
pub use embedded::EmbeddedStore;
pub use fold::most_recent_markers;
pub use instrumented::Instrumented;
pub use metrics::describe as describe_metrics;

/// One entry of a room as history keeps it: a chat message, or (1.1) an
/// event on an earlier message (`change`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredMessage {
    pub room: String,
    /// 64-bit, strictly ascending within the room (see `protocol::id`).
    pub id: u64,
    pub from: String,
    /// Server clock, Unix milliseconds.
    pub ts: u64,
    /// The message body as JSON text, opaque to the store.
    pub body: String,
    /// (1.1) The message this one replies to.
    pub reply_to: Option<u64>,
    /// (1.1) Set on an event entry: the message it changes, and how. The
    /// `body` is then an edit's new body, or empty.
    pub change: Option<Change>,
    /// (1.1) A message's state after its events, as reads of history
    /// return it (the `body` is then the latest one). Ignored by `append`.
    pub state: MessageState,
    /// (1.1) On a `react`/`unreact` entry judged by a bus that counts
    /// (Redis): how many users hold the key after it. A store given it
    /// writes it as it is, without reading (so concurrent persisters
    /// applying one message's reactions in any order agree); not stored.
    pub reaction_count: Option<u32>,
    /// (1.1) A stored send's nonce, as its keyed hash, and until when (ms)
    /// a repeat is answered with this message: kept by a store that
    /// remembers nonces (the embedded one, for a single node), in the same
    /// write as the message. Not part of the message.
    pub nonce: Option<(u128, u64)>,
}

impl StoredMessage {
    /// A plain message (no reply, no change, no state).
    pub fn new(room: impl Into<String>, id: u64, from: impl Into<String>, ts: u64, body: impl Into<String>) -> Self {
        StoredMessage {
            room: room.into(),
            id,
            from: from.into(),
            ts,
            body: body.into(),
            ..StoredMessage::default()
        }
    }
}

/// Which slice of a room's history to read. Results are always ascending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest `limit` messages.
    Newest,
    /// The `limit` messages just before this id (exclusive).
    Before(u64),
    /// The `limit` messages just after this id (exclusive).
    After(u64),
}

/// What an append did with each message it was given.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppendReport {
    /// Newly stored.
    pub written: usize,
    /// Already stored with the same content: an idempotent redelivery.
    pub duplicates: usize,
    /// Already stored with different content under the same `(room, id)`
    /// (an id reissued after a bus failover). The stored message is kept;
    /// these ids were not written.
    pub conflicts: Vec<(String, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("opening the embedded store at {path}: {source}")]
    Open {
        path: String,
        source: Box<redb::DatabaseError>,
    },
    #[error("embedded store {op}: {detail}")]
    Embedded { op: &'static str, detail: String },
    #[error("CQL store {op}: {detail}")]
    Cql { op: &'static str, detail: String },
    /// Ids that are stored already with other content, where the caller
    /// minted them itself and so cannot accept a redelivery's answer.
    #[error("message ids stored already with other content: {0:?}")]
    IdConflicts(Vec<(String, u64)>),
    #[error("the store is shut down")]
    Closed,
    /// (1.1) What this store does not keep.
    #[error("this store keeps no {0}")]
    Unsupported(&'static str),
}

/// A history store. Appends are durable when they return and idempotent by
/// `(room, id)`; reads see every append that has returned.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Stores the messages durably (one batch, in any room order).
    async fn append(&self, messages: Vec<StoredMessage>) -> Result<AppendReport, StorageError>;

    /// Up to `limit` messages of `room`, ascending by id, each in its
    /// current state (1.1: the latest body, `edited`, `deleted` with an
    /// empty body, reaction counts with `me` false). Never events.
    async fn page(&self, room: &str, page: Page, limit: usize) -> Result<Vec<StoredMessage>, StorageError>;

    /// The highest id stored for `room` (message or event).
    async fn last_id(&self, room: &str) -> Result<Option<u64>, StorageError>;

    /// (1.1) One message of `room` in its current state; `None` when no
    /// message has that id (events are not messages).
    async fn message(&self, room: &str, id: u64) -> Result<Option<StoredMessage>, StorageError>;

    /// (1.1) The reactions `user` holds on the messages `from..=to` of
    /// `room`: (message id, key), ascending by message.
    async fn reactions_by(
        &self,
        room: &str,
        user: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, String)>, StorageError>;

    /// (1.1) Up to `limit` entries of `room` after `since`, messages and
    /// events, ascending: what `join` with `since` replays. Messages come
    /// edited or deleted as they are now but without their reactions (the
    /// replayed react events that follow them carry those).
    async fn entries_after(&self, room: &str, since: u64, limit: usize) -> Result<Vec<StoredMessage>, StorageError>;

    /// (1.1) Moves `user`'s read marker in `room` to `msg` at `at` (ms)
    /// when that is forward; says whether it moved.
    async fn mark_read(&self, room: &str, user: &str, msg: u64, at: u64) -> Result<bool, StorageError>;

    /// (1.1) `user`'s read marker in `room`.
    async fn read_marker(&self, room: &str, user: &str) -> Result<Option<u64>, StorageError>;

    /// (1.1) The room's read markers, (user, message), the `limit` most
    /// recently moved first.
    async fn read_markers(&self, room: &str, limit: usize) -> Result<Vec<(String, u64)>, StorageError>;

    /// (1.1) The message a send nonce (keyed hash) was stored with, if its
    /// window is not over at `now` (ms). Stores that keep no nonces (CQL:
    /// a cluster keeps them in Redis) know none.
    async fn nonce(&self, _hash: u128, _now: u64) -> Result<Option<u64>, StorageError> {
        Ok(None)
    }

    /// (1.1) The key nonces are hashed with, the same across restarts,
    /// when the store keeps nonces.
    fn nonce_key(&self) -> Option<(u64, u64)> {
        None
    }

    /// (1.1) Bans `user` from `room` until `until` (Unix ms), replacing any
    /// ban there was. Only the embedded store keeps bans (a cluster keeps
    /// them in Redis).
    async fn set_ban(&self, _room: &str, _user: &str, _until: u64) -> Result<(), StorageError> {
        Err(StorageError::Unsupported("bans"))
    }

    /// (1.1) Until when `user` is banned from `room`, if that is after `now`.
    async fn ban(&self, _room: &str, _user: &str, _now: u64) -> Result<Option<u64>, StorageError> {
        Ok(None)
    }

    /// (1.1) Revokes `user`'s tokens issued before `before` (Unix ms),
    /// remembered until `keep_until`; an earlier `before` than the one
    /// stored changes nothing.
    async fn set_revoked(&self, _user: &str, _before: u64, _keep_until: u64) -> Result<(), StorageError> {
        Err(StorageError::Unsupported("token revocations"))
    }

    /// (1.1) The time before which `user`'s tokens are revoked, if that
    /// revocation is still kept at `now`.
    async fn revoked(&self, _user: &str, _now: u64) -> Result<Option<u64>, StorageError> {
        Ok(None)
    }
}
