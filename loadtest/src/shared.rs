//! [`Shared`]: the state of one run that every task sees: its settings,
//! live counters and latency histograms, error and close codes, and each
//! room's members and acknowledged sends.
//!
//! Tasks only add to it (atomics, per-thread histograms; the two maps are
//! touched on errors and closes, not per delivery). At the end it becomes
//! a [`Tally`]; meanwhile it gives progress [`Snapshot`]s.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::args::Args;
use crate::samples::Samples;
use crate::stats::{Counters, Latency, Snapshot};
use crate::tally::Tally;

/// One run's state, behind an `Arc` in every task of the run.
pub(crate) struct Shared {
    pub(crate) args: Args,
    pub(crate) counters: Counters,
    pub(crate) connect: Latency,
    pub(crate) ack: Latency,
    /// chat: acknowledgements of edits, reactions and read markers
    /// (`chat::Op::index` order).
    pub(crate) op_acks: [Latency; 3],
    pub(crate) delivery: Latency,
    pub(crate) history: Latency,
    pub(crate) reconnect: Latency,
    pub(crate) churn: Latency,
    pub(crate) errors: Mutex<BTreeMap<String, u64>>,
    pub(crate) closes: Mutex<BTreeMap<String, u64>>,
    /// Members of each room (senders included), fixed before sending starts.
    pub(crate) members: Vec<AtomicU64>,
    /// Acknowledged sends to each room: expected deliveries are these times
    /// the room's members (summed over workers first when split).
    pub(crate) acked_by_room: Vec<AtomicU64>,
    /// `--samples`: each latency with its send time.
    pub(crate) samples: Samples,
}

impl Shared {
    pub(crate) fn new(args: Args) -> anyhow::Result<Shared> {
        Ok(Shared {
            samples: Samples::create(args.samples.as_deref())?,
            members: (0..args.rooms).map(|_| AtomicU64::new(0)).collect(),
            acked_by_room: (0..args.rooms).map(|_| AtomicU64::new(0)).collect(),
            args,
            counters: Counters::default(),
            connect: Latency::new(),
            ack: Latency::new(),
            op_acks: [Latency::new(), Latency::new(), Latency::new()],
            delivery: Latency::new(),
            history: Latency::new(),
            reconnect: Latency::new(),
            churn: Latency::new(),
            errors: Mutex::default(),
            closes: Mutex::default(),
        })
    }

    /// Progress so far, for the live line or the parent.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let c = &self.counters;
        Snapshot {
            connected: c.connected.load(Ordering::Relaxed),
            failed: c.failed_connects.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            p99_ms: self.delivery.merged().value_at_quantile(0.99) as f64 / 1000.0,
        }
    }

    /// Deliveries this process's members should get for what was
    /// acknowledged here (only meaningful when the run is not split).
    fn expected(&self) -> u64 {
        self.members
            .iter()
            .zip(&self.acked_by_room)
            .map(|(m, a)| m.load(Ordering::Relaxed) * a.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits for deliveries still in flight after the last send: until all
    /// expected arrived, or (split over workers, where the expected count is
    /// known only to the parent) until a second passes with none, or
    /// `--drain` is over. Returns when the last delivery was seen (to
    /// within 100 ms).
    pub(crate) async fn drain(&self) -> Instant {
        let c = &self.counters;
        let started = Instant::now();
        let drain_until = started + self.args.drain;
        let split = self.args.worker_index.is_some();
        let (mut last, mut quiet, mut last_change) = (c.delivered.load(Ordering::Relaxed), 0, started);
        while Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = c.delivered.load(Ordering::Relaxed);
            if now == last {
                quiet += 1;
            } else {
                (quiet, last_change) = (0, Instant::now());
            }
            if (split && quiet >= 10) || (!split && quiet >= 1 && now >= self.expected()) {
                break;
            }
            last = now;
        }
        last_change
    }

    pub(crate) fn tally(&self, ramp_seconds: f64, duration_seconds: f64) -> Tally {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let latency = [
            ("connect", &self.connect),
            ("ack", &self.ack),
            ("delivery", &self.delivery),
            ("history", &self.history),
            ("reconnect", &self.reconnect),
            ("churn_connect", &self.churn),
        ]
        .into_iter()
        .chain(
            crate::chat::Op::OTHERS
                .iter()
                .zip(&self.op_acks)
                .filter(|_| self.args.scenario == crate::args::Scenario::Chat)
                .map(|(op, l)| (op.latency_name(), l)),
        )
        .map(|(name, l)| (name.to_string(), l.recorded()))
        .collect();
        Tally {
            connected: load(&c.connected),
            failed_connects: load(&c.failed_connects),
            sent: load(&c.sent),
            acked: load(&c.acked),
            unstored: load(&c.unstored),
            send_errors: load(&c.send_errors),
            delivered: load(&c.delivered),
            duplicates: load(&c.duplicates),
            reconnected: load(&c.reconnected),
            reconnect_failures: load(&c.reconnect_failures),
            not_recovered: load(&c.not_recovered),
            churned: load(&c.churned),
            churn_failures: load(&c.churn_failures),
            members: self.members.iter().map(load).collect(),
            acked_by_room: self.acked_by_room.iter().map(load).collect(),
            errors: self.errors.lock().clone(),
            closes: self.closes.lock().clone(),
            latency,
            ramp_seconds,
            duration_seconds,
        }
    }
}
