//! [`Tally`]: what one run, or one worker's share of it, counted, in a
//! form that crosses a process boundary (serde) and adds up ([`Tally::merge`]).
//!
//! The run fills one from its live counters (`Shared::tally`); a worker
//! sends its tally to the parent, which merges them; the report is made
//! from the merged tally (`report.rs`). Depends on nothing else in the crate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one run (or one worker's share of it) counted: counters, room
/// membership and acknowledged sends per room, and latency distributions as
/// (microseconds, count) pairs. Worker processes send theirs to the parent,
/// which merges them; the report is made from the merged tally.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    pub connected: u64,
    pub failed_connects: u64,
    pub sent: u64,
    pub acked: u64,
    /// chat: requests answered `ok` without a stored entry (read markers,
    /// reactions that changed nothing).
    #[serde(default)]
    pub unstored: u64,
    pub send_errors: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub reconnected: u64,
    pub reconnect_failures: u64,
    pub not_recovered: u64,
    pub churned: u64,
    pub churn_failures: u64,
    pub members: Vec<u64>,
    pub acked_by_room: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    pub latency: BTreeMap<String, Vec<(u64, u64)>>,
    pub ramp_seconds: f64,
    pub duration_seconds: f64,
}

impl Tally {
    /// Adds another worker's tally to this one.
    pub fn merge(&mut self, other: Tally) {
        for (a, b) in [
            (&mut self.connected, other.connected),
            (&mut self.failed_connects, other.failed_connects),
            (&mut self.sent, other.sent),
            (&mut self.acked, other.acked),
            (&mut self.unstored, other.unstored),
            (&mut self.send_errors, other.send_errors),
            (&mut self.delivered, other.delivered),
            (&mut self.duplicates, other.duplicates),
            (&mut self.reconnected, other.reconnected),
            (&mut self.reconnect_failures, other.reconnect_failures),
            (&mut self.not_recovered, other.not_recovered),
            (&mut self.churned, other.churned),
            (&mut self.churn_failures, other.churn_failures),
        ] {
            *a += b;
        }
        for (mine, theirs) in [
            (&mut self.members, other.members),
            (&mut self.acked_by_room, other.acked_by_room),
        ] {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        for (mine, theirs) in [(&mut self.errors, other.errors), (&mut self.closes, other.closes)] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        for (name, pairs) in other.latency {
            self.latency.entry(name).or_default().extend(pairs);
        }
        self.ramp_seconds = self.ramp_seconds.max(other.ramp_seconds);
        self.duration_seconds = self.duration_seconds.max(other.duration_seconds);
    }

    /// Deliveries the acknowledged sends should have made: each room's
    /// acknowledged sends times its members.
    pub fn expected(&self) -> u64 {
        self.members.iter().zip(&self.acked_by_room).map(|(m, a)| m * a).sum()
    }
}
