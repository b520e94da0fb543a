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
//! (ids are `protocol::id`s).

#![forbid(unsafe_code)]

pub mod cql;
pub mod embedded;
pub mod instrumented;
mod metrics;
#[cfg(test)]
mod suite;

use async_trait::async_trait;

pub use cql::{CqlConfig, CqlStore, Replication};
pub use embedded::EmbeddedStore;
pub use instrumented::Instrumented;
pub use metrics::describe as describe_metrics;

/// One chat message as history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// A history store. Appends are durable when they return and idempotent by
/// `(room, id)`; reads see every append that has returned.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Stores the messages durably (one batch, in any room order).
    async fn append(&self, messages: Vec<StoredMessage>) -> Result<AppendReport, StorageError>;

    /// Up to `limit` messages of `room`, ascending by id.
    async fn page(&self, room: &str, page: Page, limit: usize) -> Result<Vec<StoredMessage>, StorageError>;

    /// The highest id stored for `room`.
    async fn last_id(&self, room: &str) -> Result<Option<u64>, StorageError>;
}
