//! The bus: how a message sent on one node reaches every node with members
//! of its room, in one order, after it is durable.
//!
//! - [`Bus`] is the seam the gateway talks to: publish, ephemeral events,
//!   replay for `join` with `since`, history, and room interest.
//! - [`Sink`] is how a bus hands entries back to the node for local
//!   delivery, in each room's order.
//! - [`inprocess::InProcessBus`] serves one node with no external services:
//!   it mints ids per room, commits to the history store, then delivers.
//! - [`redis_bus::RedisBus`] joins any number of nodes through Redis Streams
//!   (one server or a Redis Cluster); its module doc says where each of its
//!   concerns (stream layout and entry codec, publishing, readers, the
//!   window, trimming, presence, the node lease) lives.
//! - [`persister`] drains the shard streams into the history store; it runs
//!   inside gateway nodes or alone in the `dispatcher` binary.
//! - [`settings`]: the cluster settings both binaries share (Redis, streams,
//!   the CQL store, the persister, logging), loaded and validated one way.
//! - [`backoff`]: the one reconnect backoff (exponential, full jitter).
//! - [`groups`]: reading a stream with a consumer group, at least once
//!   (the persister's loop, and the feed consumers').
//! - [`feed`] (1.1): the event feed for backends: its connection events,
//!   and [`feed::consumer`] to read it.
//! - [`changes`]: whether an edit, deletion or reaction (1.1) may be
//!   stored, judged against its target's state.
//! - [`dedupe`]: send nonces (1.1): which repeated sends are answered with
//!   the first one's id instead of being stored again.
//! - [`control`] (1.1): the server API's operator actions (kick and ban,
//!   disconnect, revoke), stored where they must last and handed to every
//!   node's [`Sink::control`].
//! - `metrics`: the `gateway_bus_*` and `gateway_persister_*` metrics
//!   ([`describe_metrics`] registers their help text).
//!
//! The dispatcher knows nothing of WebSockets: it moves [`Delivery`]s.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod changes;
pub mod control;
pub mod dedupe;
pub mod feed;
pub mod groups;
pub mod inprocess;
mod metrics;
pub mod persister;
pub mod redis_bus;
pub mod settings;

use std::sync::Arc;

use async_trait::async_trait;
pub use changes::Refusal;
pub use control::Control;
pub use metrics::{describe as describe_metrics, exporter_builder};
pub use storage::{Change, ChangeKind, Page, StoredMessage};

/// A message a client (or the server API) publishes.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: Arc<str>,
    pub from: Arc<str>,
    /// JSON text.
    pub body: String,
    /// Delivered live, never stored.
    pub ephemeral: bool,
    /// (1.1) The client's nonce: a stored message repeating a (user, room,
    /// nonce) within the dedupe window is not stored again (see
    /// [`dedupe`]).
    pub nonce: Option<Arc<str>>,
    /// (1.1) The message this one replies to.
    pub reply_to: Option<u64>,
    /// (1.1) Set for an edit, deletion or reaction: the message it changes
    /// (`body` is an edit's new body, else empty). Checked against that
    /// message by [`changes`] before it gets an id.
    pub change: Option<Change>,
    /// (1.1) The publisher may delete others' messages in this room (a
    /// moderator, or the server API).
    pub moderator: bool,
}

impl NewMessage {
    /// A plain, stored message.
    pub fn new(room: impl Into<Arc<str>>, from: impl Into<Arc<str>>, body: impl Into<String>) -> NewMessage {
        NewMessage {
            room: room.into(),
            from: from.into(),
            body: body.into(),
            ephemeral: false,
            nonce: None,
            reply_to: None,
            change: None,
            moderator: false,
        }
    }
}

/// The bus's answer once a message is durable (or, ephemeral, ordered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: u64,
    pub ts: u64,
    /// (1.1) A repeated nonce: `id` and `ts` are the first message's, and
    /// nothing was stored or delivered.
    pub duplicate: bool,
}

/// Room events that are delivered and never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Joined,
    Left,
    Typing,
    /// (1.1) The user's read marker in the room moved to `msg`.
    Read {
        msg: u64,
    },
}

impl EventKind {
    pub fn op(self) -> &'static str {
        match self {
            EventKind::Joined => "joined",
            EventKind::Left => "left",
            EventKind::Typing => "typing",
            EventKind::Read { .. } => "read",
        }
    }
}

/// One entry handed to the node for its local members of a room.
#[derive(Debug, Clone)]
pub enum Delivery {
    Message {
        msg: Arc<StoredMessage>,
        ephemeral: bool,
    },
    Event {
        room: Arc<str>,
        kind: EventKind,
        user: Arc<str>,
        /// An opaque tag of the connection that caused it, which does not
        /// get it back (a client's own `typing`).
        origin: Option<u64>,
    },
}

impl Delivery {
    pub fn room(&self) -> &str {
        match self {
            Delivery::Message { msg, .. } => &msg.room,
            Delivery::Event { room, .. } => room,
        }
    }
}

/// The node side of a bus. `deliver` must not block. A room's messages
/// come in the room's order, from one caller at a time (the in-process
/// sequencer, or the room's stream reader). Ephemeral room events may not:
/// the in-process bus delivers `joined`/`left`/`typing` from the task that
/// published them, beside the sequencer.
pub trait Sink: Send + Sync + 'static {
    fn deliver(&self, batch: Vec<Delivery>);

    /// (1.1) An operator action for this node's connections (see
    /// [`control`]). Must not block.
    fn control(&self, _action: &Control) {}
}

/// What `join` with `since` can replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Every stored message after `since`, ascending, when `complete`.
    pub messages: Vec<StoredMessage>,
    /// False when the gap is larger than the recovery limit.
    pub complete: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// (1.1) An event that may not be stored (see [`changes`]).
    #[error("event refused: {0:?}")]
    Refused(Refusal),
    /// (1.1) What this bus configuration cannot do yet.
    #[error("not supported by this bus: {0}")]
    Unsupported(&'static str),
    #[error("the bus is shutting down")]
    Closed,
    /// (1.1) This node's settings disagree with the cluster's (in Redis).
    #[error("settings disagree with the cluster: {0}")]
    Config(String),
}

impl From<storage::StorageError> for BusError {
    fn from(e: storage::StorageError) -> Self {
        BusError::Unavailable(e.to_string())
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Orders the message in its room, makes it durable (unless ephemeral),
    /// hands it to every node's sink, and returns its id.
    async fn publish(&self, msg: NewMessage) -> Result<Published, BusError>;

    /// Publishes one sender's messages in order, in as few round trips as
    /// the bus can (a pipeline, one sequencer batch). Results come back in
    /// the same order; each message succeeds or fails on its own.
    async fn publish_batch(&self, msgs: Vec<NewMessage>) -> Vec<Result<Published, BusError>> {
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            out.push(self.publish(m).await);
        }
        out
    }

    /// Delivers an ephemeral room event to every node.
    async fn publish_event(
        &self,
        room: Arc<str>,
        kind: EventKind,
        user: Arc<str>,
        origin: Option<u64>,
    ) -> Result<(), BusError>;

    /// The stored messages after `since`, if there are at most `limit`.
    async fn replay(&self, room: &str, since: u64, limit: usize) -> Result<Replay, BusError>;

    /// A page of history including every acknowledged message, each in
    /// its current state (1.1), with `me` on the reactions `viewer` holds.
    async fn history(
        &self,
        room: &str,
        page: Page,
        limit: usize,
        viewer: Option<&str>,
    ) -> Result<Vec<StoredMessage>, BusError>;

    /// (1.1) Moves `user`'s read marker in `room` forward to `msg`; says
    /// whether it moved.
    async fn mark_read(&self, _room: &str, _user: &str, _msg: u64) -> Result<bool, BusError> {
        Err(BusError::Unsupported("read markers"))
    }

    /// (1.1) `user`'s read marker in `room`.
    async fn read_marker(&self, _room: &str, _user: &str) -> Result<Option<u64>, BusError> {
        Ok(None)
    }

    /// (1.1) The room's read markers, the `limit` most recently moved.
    async fn read_markers(&self, _room: &str, _limit: usize) -> Result<Vec<(String, u64)>, BusError> {
        Err(BusError::Unsupported("read markers"))
    }

    /// A local connection joins `room`. When this returns, every message
    /// published to the room from now on reaches the node's sink, so a
    /// replay read afterwards leaves no gap.
    async fn watch(&self, _room: &str) -> Result<(), BusError> {
        Ok(())
    }

    /// A local connection left `room` (one call per `watch`).
    fn unwatch(&self, _room: &str) {}

    /// A user's connections in a room on this node changed: `connections`
    /// is how many there are now (0: the user's presence here ended).
    async fn presence_changed(&self, _room: &str, _user: &str, _connections: u32) -> Result<(), BusError> {
        Ok(())
    }

    /// (1.1) Each user in a room across the cluster with their number of
    /// connections in it; `None` when the bus knows no more than this node.
    async fn room_members(&self, _room: &str) -> Result<Option<Vec<(String, u32)>>, BusError> {
        Ok(None)
    }

    /// (1.1) Stores what `action` leaves behind (a ban, a revocation) and
    /// hands it to every node's [`Sink::control`], this one's included.
    async fn control(&self, _action: Control) -> Result<(), BusError> {
        Err(BusError::Unsupported("operator actions"))
    }

    /// (1.1) Until when (Unix ms) `user` is banned from `room`, if now.
    async fn ban(&self, _room: &str, _user: &str) -> Result<Option<u64>, BusError> {
        Ok(None)
    }

    /// (1.1) Tokens of `user` issued before this time (Unix ms) are
    /// revoked, if such a revocation stands.
    async fn revoked(&self, _user: &str) -> Result<Option<u64>, BusError> {
        Ok(None)
    }

    /// (1.1) A connection event for the event feed, when it is on (see
    /// [`feed`]); never waits.
    fn feed(&self, _event: feed::FeedEvent) {}

    /// The users present in a room across the cluster; `None` when the bus
    /// knows no more than this node does.
    async fn presence(&self, _room: &str) -> Result<Option<Vec<String>>, BusError> {
        Ok(None)
    }

    /// The node id the bus leased, when it leases one.
    fn node_id(&self) -> Option<&str> {
        None
    }

    /// Whether publishes can succeed now (for `/readyz`).
    fn is_ready(&self) -> bool;

    /// Stops taking publishes and finishes the ones in flight.
    async fn close(&self);
}
