//! Measurement without contention: atomic counters, and HDR histograms kept
//! per thread (each thread records into its own, under an uncontended lock)
//! and merged when read; and the progress [`Snapshot`] with the [`Ticker`]
//! that shows it.
//!
//! A leaf: it depends on no other module of the crate, so the run, the
//! parent of `--workers` and the worker link can all use it.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The wall clock in microseconds: what a sender writes into each body and
/// a member subtracts on delivery (end to end, across processes).
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub failed_connects: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// chat: answered `ok` without a stored entry.
    pub unstored: AtomicU64,
    pub send_errors: AtomicU64,
    pub delivered: AtomicU64,
    /// `msg` events at or below the last id the member had seen.
    pub duplicates: AtomicU64,
    pub reconnected: AtomicU64,
    pub reconnect_failures: AtomicU64,
    /// Joins answered `recovered: false`.
    pub not_recovered: AtomicU64,
    pub churned: AtomicU64,
    pub churn_failures: AtomicU64,
}

/// A latency distribution in microseconds, 1 µs to 1 hour, 3 digits.
pub struct Latency {
    id: usize,
    parts: Mutex<Vec<Part>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// One thread's share of a distribution.
type Part = Arc<Mutex<Histogram<u64>>>;

thread_local! {
    /// This thread's histogram for each `Latency` (by id).
        static LOCAL: RefCell<Vec<Option<Part>>> = const { RefCell::new(Vec::new()) };
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds")
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed) as usize,
            parts: Mutex::default(),
        }
    }

    pub fn record(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            if local.len() <= self.id {
                local.resize(self.id + 1, None);
            }
            let h = local[self.id].get_or_insert_with(|| {
                let h = Arc::new(Mutex::new(new_histogram()));
                self.parts.lock().push(h.clone());
                h
            });
            let _ = h.lock().record(us);
        });
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for part in self.parts.lock().iter() {
            let _ = all.add(&*part.lock());
        }
        all
    }

    /// The distribution as (microseconds, count) pairs: how a worker
    /// process hands its histograms to the parent.
    pub fn recorded(&self) -> Vec<(u64, u64)> {
        let h = self.merged();
        h.iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }
}

/// A histogram rebuilt from (microseconds, count) pairs.
pub fn from_recorded(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = new_histogram();
    for &(us, n) in pairs {
        let _ = h.record_n(us.clamp(1, 3_600_000_000), n);
    }
    h
}

/// `{count, p50, p90, p99, p999, max}` in milliseconds.
pub fn summary(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
        "max": h.max() as f64 / 1000.0,
    })
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

/// Progress so far: what the live line shows, and what a worker process
/// reports to the parent once a second.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub connected: u64,
    pub failed: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    /// Delivery p99 so far (across workers: the largest worker's).
    pub p99_ms: f64,
}

impl Snapshot {
    /// Several workers' progress as one.
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a Snapshot>) -> Snapshot {
        parts.into_iter().fold(Snapshot::default(), |a, b| Snapshot {
            connected: a.connected + b.connected,
            failed: a.failed + b.failed,
            sent: a.sent + b.sent,
            acked: a.acked + b.acked,
            delivered: a.delivered + b.delivered,
            p99_ms: a.p99_ms.max(b.p99_ms),
        })
    }
}

/// Shows one snapshot a second on stderr: a spinner line on a terminal, a
/// plain line every five seconds otherwise.
pub struct Ticker {
    bar: Option<indicatif::ProgressBar>,
    last: Snapshot,
    tick: u64,
}

impl Ticker {
    pub fn new() -> Ticker {
        let bar = std::io::stderr()
            .is_terminal()
            .then(indicatif::ProgressBar::new_spinner);
        Ticker {
            bar,
            last: Snapshot::default(),
            tick: 0,
        }
    }

    /// Call once a second: rates are per call.
    pub fn show(&mut self, now: Snapshot) {
        self.tick += 1;
        let line = format!(
            "conns {} (failed {}) | sent {}/s acked {} | delivered {}/s | delivery p99 {:.2} ms",
            now.connected,
            now.failed,
            now.sent.saturating_sub(self.last.sent),
            now.acked,
            now.delivered.saturating_sub(self.last.delivered),
            now.p99_ms
        );
        self.last = now;
        match &self.bar {
            Some(bar) => {
                bar.set_message(line);
                bar.tick();
            }
            None if self.tick.is_multiple_of(5) => eprintln!("{line}"),
            None => {}
        }
    }
}

impl Default for Ticker {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
