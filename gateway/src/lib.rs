//! A gateway node: WebSocket chat clients in, the bus and the history store
//! behind.
//!
//! - [`config`]: the node's settings (flags, `GATEWAY_*` env, a TOML file),
//!   on top of the cluster settings it shares with the `dispatcher` binary
//!   (`dispatcher::settings`).
//! - [`Node`] (`node.rs`): what every connection and HTTP handler of one
//!   node shares.
//! - [`http`]: hyper 1 routes; `/ws` upgrades hand the raw socket to
//!   [`conn`], one small task per connection; `/api/...` is the server API
//!   ([`api`]: messages, moderation, room info, behind named API keys);
//!   `/` and `/demo/...` the demo chat page (`demo`: files built from
//!   `clients/demo`, embedded at compile time).
//! - [`conn`]: one connection, in layers that depend one way: the socket
//!   (`conn/socket.rs`: the wait, read bursts, writes, the close), frames
//!   to requests (`conn/frames.rs`), the ops one file per family under
//!   `conn/ops/` (auth, rooms, send, history, presence) behind one dispatch
//!   table, and the connection's state (`conn/session.rs`: identity, rooms,
//!   rate limits, replies and errors).
//! - [`hub`]: connection shards with their room indexes, the node-wide room
//!   registry (routing, presence), and the router that turns bus deliveries
//!   into WebSocket frames once per node.
//! - [`ws`]: frame encoding and the idle-buffer-free read path.
//! - [`view`]: the one stored-message-to-protocol mapping every encoder
//!   uses.
//! - [`admission`]: which upgrades and users a node takes (origins,
//!   connection caps per node, IP and user, the memory budget).
//! - [`auth`]: JWT and guests; [`jwt`]: which key checks a token (one
//!   static key, or a JWK set); [`jwks`]: a JWK set from a file or a URL,
//!   followed so keys rotate without a restart. [`metrics`]: `gateway_*` metrics.
//! - [`read_events`] (1.1): `read` events, coalesced to one per user and
//!   room per second on a node.
//! - [`moderation`] (1.1): the node's connections, and the operator
//!   actions (kick, disconnect, revoke) queued on those of a user.
//! - `accept`: the client listener's accept step, which closes connections
//!   over their address's rate before tokio registers them.
//! - `server`: [`run`] wires them to the bus (`dispatcher`) and the store
//!   (`storage`) and serves until the shutdown token is cancelled, then
//!   drains.

#![forbid(unsafe_code)]

mod accept;
pub mod admission;
pub mod api;
pub mod auth;
pub mod config;
mod conn;
mod demo;
mod http;
pub mod hub;
pub mod jwks;
pub mod jwt;
pub mod metrics;
pub mod moderation;
mod node;
pub mod read_events;
mod server;
mod view;
pub mod ws;

pub use config::{Config, ConfigError, Settings};
pub use node::Node;
pub use server::{GatewayError, run};
