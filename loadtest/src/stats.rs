//! Measurement without contention: atomic counters, and HDR histograms kept
//! per thread (each thread records into its own, under an uncontended lock)
//! and merged when read.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;

#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub failed_connects: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
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

    /// `{count, p50, p90, p99, p999, max}` in milliseconds.
    pub fn summary(&self) -> serde_json::Value {
        let h = self.merged();
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        json!({
            "count": h.len(),
            "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999),
            "max": h.max() as f64 / 1000.0,
        })
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

/// Live progress on stderr: a spinner line on a terminal, a plain line
/// every five seconds otherwise.
pub struct Progress {
    stop: Arc<AtomicU64>,
}

impl Progress {
    pub(crate) fn start(shared: Arc<crate::Shared>, quiet: bool) -> Progress {
        let stop = Arc::new(AtomicU64::new(0));
        if !quiet {
            let flag = stop.clone();
            tokio::spawn(async move {
                let tty = std::io::stderr().is_terminal();
                let bar = if tty {
                    indicatif::ProgressBar::new_spinner()
                } else {
                    indicatif::ProgressBar::hidden()
                };
                let c = &shared.counters;
                let (mut last_sent, mut last_delivered) = (0, 0);
                let mut tick = 0u64;
                while flag.load(Ordering::Relaxed) == 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    tick += 1;
                    let (sent, delivered) = (c.sent.load(Ordering::Relaxed), c.delivered.load(Ordering::Relaxed));
                    let p99 = shared.delivery.merged().value_at_quantile(0.99) as f64 / 1000.0;
                    let line = format!(
                        "conns {} (failed {}) | sent {}/s acked {} | delivered {}/s | delivery p99 {:.2} ms",
                        c.connected.load(Ordering::Relaxed),
                        c.failed_connects.load(Ordering::Relaxed),
                        sent - last_sent,
                        c.acked.load(Ordering::Relaxed),
                        delivered - last_delivered,
                        p99
                    );
                    (last_sent, last_delivered) = (sent, delivered);
                    if tty {
                        bar.set_message(line);
                        bar.tick();
                    } else if tick.is_multiple_of(5) {
                        eprintln!("{line}");
                    }
                }
                bar.finish_and_clear();
            });
        }
        Progress { stop }
    }

    pub fn stop(&self) {
        self.stop.store(1, Ordering::Relaxed);
    }
}
