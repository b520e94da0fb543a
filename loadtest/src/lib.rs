//! `loadtest`: drives WebSocket chat gateways (protocol v1, or Centrifugo's
//! for side-by-side runs) and measures them end to end.
//!
//! [`Args`] is the command line; [`run`] runs one scenario and returns a
//! [`Report`]; the binary prints it, writes it as JSON, and exits non-zero
//! when [`check`] finds a threshold (`--max-p99-ms`, `--max-loss`) exceeded.
//! With `--workers N` the run is split over processes ([`workers`]) whose
//! [`Tally`]s are merged into one report.
//!
//! Modules, from the leaves up (each imports only modules above it in this
//! list, never the other way):
//!
//! - [`proto`]: the wire protocols: frames written and read by hand, field
//!   readers without a JSON parse.
//! - [`stats`]: atomic counters, per-thread HDR histograms, progress
//!   snapshots and the live line.
//! - `args`: [`Args`], [`Scenario`], validation, a worker's share of the run.
//! - `tally`: [`Tally`], what a run counted, and how tallies merge.
//! - `report`: [`Report`] from a tally (loss, rates, percentiles) and [`check`].
//! - `link`: the worker side of the parent/worker line protocol.
//! - `shared`: the run's live state every task adds to.
//! - `samples`: `--samples`, each latency with its send time, for scripts.
//! - `progress`: the once-a-second progress task.
//! - `conn`: opening one connection (source address, handshake, auth, joins).
//! - `member`: the member task and the per-delivery accounting.
//! - `sender`: a sender's paced send loop and its read half (acks).
//! - `chat`: the `chat` scenario's mix of sends, edits, reactions and read
//!   markers (protocol 1.1).
//! - `scenario`: [`run_tally`], the steps every run takes, and one submodule
//!   per scenario (`fanout` with `reconnect`, `history`, `churn`).
//! - [`workers`]: the parent of `--workers`, and a worker's entry point.

#![forbid(unsafe_code)]

mod args;
mod chat;
mod conn;
mod link;
mod member;
mod progress;
pub mod proto;
mod report;
mod samples;
mod scenario;
mod sender;
mod shared;
pub mod stats;
mod tally;
pub mod workers;

pub use args::{Args, Scenario};
pub use proto::Protocol;
pub use report::{Report, check};
pub use scenario::{run, run_tally};
pub use tally::Tally;
