//! The Redis Streams bus: any number of gateway nodes behave as one.
//!
//! Rooms map to a fixed number of shard streams by a keyed hash (the
//! cluster's key, in Redis, so clients cannot steer rooms); each
//! stream key carries its own hash tag (`gw:{s7}`), so every command
//! touches one slot and the streams spread over a Redis Cluster's masters.
//! A room lives in exactly one stream, whose entry ids (`ms-seq`, strictly
//! increasing) are its message ids, so every node sees one order.
//!
//! Where each concern lives:
//! - [`conn`]: connections, the same on one server and on a Redis Cluster.
//! - [`streams`]: key layout, which stream a room is in, the entry codec.
//! - [`cluster_keys`]: what a node settles with the cluster at start (the
//!   hash key, and whether the shard streams are the feed's).
//! - `publish`: `XADD`s on one shared multiplexed connection.
//! - `readers`: one reading task per stream this node has members in.
//! - `window`: history and replay from the stream window, merged with the
//!   CQL store when there is one (the persister fills it; without one the
//!   window is all a cluster keeps).
//! - `trim`: trimming to the window, never past what is not yet stored.
//! - `changes` (1.1): edits, deletions and reactions, judged and appended
//!   by one script beside the room's stream, their state kept in Redis and
//!   folded into what history and replay read.
//! - `reads` (1.1): read markers in Redis, for a cluster without a store.
//! - `presence`: per room, each `node|user` with its connections there
//!   (presence and room counts).
//! - `feed` (1.1): the event feed's connection events (batched per node).
//!   With the feed on the shard streams are the feed streams, so stored
//!   room events are in the feed as they are appended.
//! - `control` (1.1): operator actions (kick and ban, disconnect, revoke):
//!   their state as expiring keys, the control stream every node reads.
//! - `lease`: the node id lease and heartbeat key.
//! - [`users`]: per-user connection and send counts over the cluster, for
//!   the gateway's per-user limits.
//! - `bus`: [`RedisBus`], which puts them together behind [`crate::Bus`].

mod bus;
mod changes;
pub mod cluster_keys;
pub mod conn;
mod control;
mod feed;
mod lease;
mod presence;
mod publish;
mod readers;
mod reads;
pub mod streams;
mod trim;
pub mod users;
mod window;

pub use bus::{RedisBus, RedisBusConfig};
pub use conn::Target;
pub use streams::StreamLayout;
pub use users::UserCounts;
