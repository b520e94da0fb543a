//! (1.1) The event feed for backends: what happened on the gateways, in
//! Redis streams a backend reads with its own consumer groups
//! (docs/FEED.md has the entry format).
//!
//! - With the feed on, the shard streams are the feed streams
//!   (`StreamLayout::with_feed`): stored room events (message, edit,
//!   delete, react, unreact) are in the feed as they are appended, written
//!   once, in the room's order.
//! - Connection events ([`FeedEvent`]: connect, disconnect, join, leave)
//!   are batched by each node (`redis_bus::feed`): whatever came while the
//!   previous batch was being written goes in the next pipeline.
//! - [`consumer`]: reading the feed with a consumer group, taking over what
//!   a dead consumer left pending (`XAUTOCLAIM`), as the persister does,
//!   and turning the streams' entries into the feed's form (leaving out
//!   what the nodes exchange beside it: typing, presence, ...); the
//!   `feed-consumer` example binary is a thin wrapper over it.

pub mod consumer;

use std::sync::Arc;

/// A connection event of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// A connection authenticated as `user`.
    Connect { user: Arc<str>, conn: u64 },
    /// An authenticated connection ended.
    Disconnect { user: Arc<str>, conn: u64 },
    /// A connection joined `room`.
    Join { room: Arc<str>, user: Arc<str>, conn: u64 },
    /// A connection left `room` (or was removed, or ended while in it).
    Leave { room: Arc<str>, user: Arc<str>, conn: u64 },
}

impl FeedEvent {
    /// Its `k` in the feed.
    pub fn kind(&self) -> &'static str {
        match self {
            FeedEvent::Connect { .. } => "connect",
            FeedEvent::Disconnect { .. } => "disconnect",
            FeedEvent::Join { .. } => "join",
            FeedEvent::Leave { .. } => "leave",
        }
    }

    pub fn user(&self) -> &str {
        match self {
            FeedEvent::Connect { user, .. }
            | FeedEvent::Disconnect { user, .. }
            | FeedEvent::Join { user, .. }
            | FeedEvent::Leave { user, .. } => user,
        }
    }

    /// The room of a join or leave.
    pub fn room(&self) -> Option<&str> {
        match self {
            FeedEvent::Join { room, .. } | FeedEvent::Leave { room, .. } => Some(room),
            _ => None,
        }
    }

    pub fn conn(&self) -> u64 {
        match self {
            FeedEvent::Connect { conn, .. }
            | FeedEvent::Disconnect { conn, .. }
            | FeedEvent::Join { conn, .. }
            | FeedEvent::Leave { conn, .. } => *conn,
        }
    }

    /// Its fields in the feed: `k`, `u`, `r` (join, leave), `node` the
    /// node's incarnation (`<node id>|<token>`, new at every start), `conn`
    /// the connection's number on it, `ts` (ms).
    pub fn fields(&self, node: &str, ts: u64) -> Vec<(&'static str, String)> {
        let mut f = vec![("k", self.kind().to_string()), ("u", self.user().to_string())];
        if let Some(room) = self.room() {
            f.push(("r", room.to_string()));
        }
        f.push(("node", node.to_string()));
        f.push(("conn", self.conn().to_string()));
        f.push(("ts", ts.to_string()));
        f
    }
}
