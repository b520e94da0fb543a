//! The command line: [`Args`] (clap), the [`Scenario`]s, their validation,
//! and how a worker process finds its share of the run (every `workers`-th
//! connection, sender and reader from its own index, `1/workers` of each
//! rate).
//!
//! Every other module reads the run's settings from here; it depends only
//! on [`crate::proto`] (for [`Protocol`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};

use crate::proto::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Connect, authenticate, join, and hold the connections.
    Idle,
    /// Members in rooms; senders publish at a total rate; measure delivery.
    Fanout,
    /// Each connection asks for a history page, waits, asks again.
    History,
    /// Fan-out, and halfway through every member drops its connection and
    /// resumes with `since`: nothing may be lost or duplicated.
    Reconnect,
    /// Members held; meanwhile connections open, join, and close at
    /// `--churn-rate` per second.
    Churn,
    /// (1.1) Fan-out whose senders mix sends with edits, reactions and
    /// read markers on their own messages (`--edit-share`,
    /// `--react-share`, `--read-share`); events count as deliveries.
    Chat,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "loadtest", version, about = "Load generator for WebSocket chat gateways")]
pub struct Args {
    /// Gateway WebSocket URL (`ws://127.0.0.1:8080/ws`); repeat for several
    /// nodes: connections are spread round-robin.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    #[arg(long, value_enum, default_value = "fanout")]
    pub scenario: Scenario,
    /// Member connections.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Rooms the members are spread over (members per room = connections / rooms).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Sender connections (each also a member of the rooms it sends to).
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long to send (fanout) or hold (idle).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,
    /// Mint HS256 tokens with this secret (else anonymous guests).
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// Room names are `<prefix>-<n>`.
    #[arg(long, default_value = "lt")]
    pub room_prefix: String,
    /// Spread source addresses over 127.0.0.1 .. 127.0.0.N so one
    /// address's ports are not the limit (loopback targets only).
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
    /// Extra bytes of padding in each message body.
    #[arg(long, default_value_t = 0)]
    pub body_bytes: usize,
    /// Time after the last send to wait for deliveries still in flight.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Write the report here as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Fail (exit 1) when delivery p99 is above this many milliseconds.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Fail (exit 1) when more than this fraction of expected deliveries is missing.
    #[arg(long)]
    pub max_loss: Option<f64>,
    /// No live progress.
    #[arg(long)]
    pub quiet: bool,
    /// chat: the share of sender ticks that edit their last message.
    #[arg(long, default_value_t = 0.1)]
    pub edit_share: f64,
    /// chat: the share that react to it (or give a reaction back).
    #[arg(long, default_value_t = 0.3)]
    pub react_share: f64,
    /// chat: the share that move the sender's read marker to it.
    #[arg(long, default_value_t = 0.1)]
    pub read_share: f64,
    /// Write every ack and delivery latency here, a line each:
    /// `<a|d> <sent unix µs> <latency µs>` (one process only: not with
    /// `--workers`).
    #[arg(long)]
    pub samples: Option<PathBuf>,
    /// history: the room to page (default: the first room).
    #[arg(long)]
    pub history_room: Option<String>,
    /// history: messages per page.
    #[arg(long, default_value_t = 50)]
    pub history_limit: usize,
    /// history: page before this message id (a deep page); default newest.
    #[arg(long)]
    pub history_before: Option<u64>,
    /// Wire protocol of the target: this gateway's, or Centrifugo's (for
    /// side-by-side runs: `--url ws://127.0.0.1:8000/connection/websocket`).
    #[arg(long, value_enum, default_value = "chat")]
    pub protocol: Protocol,
    /// Create this file once every member is connected and in its room
    /// (scripts measure the target's memory from then on).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// churn: connections opened and closed per second.
    #[arg(long, default_value_t = 100.0)]
    pub churn_rate: f64,
    /// Split the run over this many worker processes, each with its own
    /// open-file limit (one process holds at most `ulimit -Hn` sockets);
    /// connections, senders, rates and ramp are divided among them, sending
    /// starts when all are ready, and their counts and histograms are merged
    /// into one report.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Set by the parent on its worker processes: this one's number.
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
}

impl Args {
    /// Refuses combinations a run cannot honour, before anything connects
    /// (the binary exits 64 on these).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.connections == 0 || self.rooms == 0 || self.rooms > self.connections {
            bail!("--rooms must be from 1 to --connections");
        }
        if matches!(self.scenario, Scenario::Fanout | Scenario::Reconnect | Scenario::Chat)
            && (self.senders == 0 || self.rate.is_nan() || self.rate <= 0.0)
        {
            bail!("fanout, reconnect and chat need --senders >= 1 and --rate > 0");
        }
        let shares = [self.edit_share, self.react_share, self.read_share];
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) || shares.iter().sum::<f64>() > 1.0 {
            bail!("--edit-share, --react-share and --read-share are from 0 to 1, together at most 1");
        }
        if self.scenario == Scenario::Chat && self.protocol != Protocol::Chat {
            bail!("the chat scenario speaks this gateway's protocol only");
        }
        if self.scenario == Scenario::Churn && (self.churn_rate.is_nan() || self.churn_rate <= 0.0) {
            bail!("churn needs --churn-rate > 0");
        }
        if self.protocol == Protocol::Centrifugo
            && (self.jwt_secret.is_some() || matches!(self.scenario, Scenario::History | Scenario::Reconnect))
        {
            bail!("with --protocol centrifugo: anonymous clients, scenarios idle, fanout and churn");
        }
        if self.source_ips == 0 {
            bail!("--source-ips must be at least 1");
        }
        if self.workers == 0 || self.workers > self.connections {
            bail!("--workers must be from 1 to --connections");
        }
        if self.samples.is_some() && self.workers > 1 {
            bail!("--samples is written by one process: not with --workers");
        }
        if self.worker_index.is_some_and(|w| w >= self.workers) {
            bail!("--worker-index must be below --workers");
        }
        for u in &self.urls {
            target_of(u)?;
        }
        Ok(())
    }

    pub(crate) fn room(&self, n: usize) -> String {
        format!("{}-{n}", self.room_prefix)
    }

    /// This process's share of `0..n` (connections, senders, readers):
    /// every `workers`-th index from its own.
    pub(crate) fn share(&self, n: usize) -> impl Iterator<Item = usize> + use<> {
        let (first, step) = self.slot();
        (first..n).step_by(step)
    }

    /// This process's place in the split: (its index, how many processes).
    pub(crate) fn slot(&self) -> (usize, usize) {
        match self.worker_index {
            Some(w) => (w, self.workers),
            None => (0, 1),
        }
    }

    /// The processes the run is split over: this process's share of a total
    /// rate is `1 / parts`.
    pub(crate) fn parts(&self) -> f64 {
        self.slot().1 as f64
    }
}

/// The socket address of a `ws://IP:port/...` URL; refuses anything but
/// loopback, so a typo cannot aim load at another machine.
pub(crate) fn target_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("{url}: only ws:// URLs"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = host.parse().with_context(|| format!("{url}: give an IP:port"))?;
    if !addr.ip().is_loopback() {
        bail!("{url}: load is only sent to loopback addresses");
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_loopback_targets() {
        assert!(target_of("ws://127.0.0.1:8080/ws").is_ok());
        assert!(target_of("ws://10.0.0.1:8080/ws").is_err());
        assert!(target_of("wss://127.0.0.1:8080/ws").is_err());
    }
}
