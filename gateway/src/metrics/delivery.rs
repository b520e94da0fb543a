//! Publish-to-deliver latency: from a message's bus entry (the time in its
//! id, `ms << 22 | seq`, minted by the order-giver) to its frame written on
//! a client's socket, as a Prometheus histogram
//! (`gateway_fanout_delivery_latency_seconds`).
//!
//! It is measured on the fan-out path, once per message per connection, so
//! it costs no clock read there: the shards refresh a node-wide coarse
//! clock ([`tick`]) once per delivery batch, and a write compares each
//! message's id with it. The buckets are plain atomics, kept here rather
//! than in the `metrics` recorder, whose histograms keep every sample until
//! the next scrape or upkeep (8 bytes per delivery: megabytes a second
//! under fan-out); [`Latency::render`] writes them in the text format. They
//! are striped by thread, a cache line each, so the runtime's workers do
//! not contend for one line on every delivery; a scrape sums the stripes.
//!
//! Resolution: whole milliseconds (ids carry milliseconds), and the clock
//! is as fresh as the latest delivery batch on the node, so a write is
//! never measured later than it happened. Clock skew between the Redis
//! host and the node shows as an offset (clamped at 0).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub const NAME: &str = "gateway_fanout_delivery_latency_seconds";
const HELP: &str = "Time from a message's bus entry (the millisecond in its id) to its frame written on a client's socket, per message and connection, in seconds (millisecond resolution).";

/// Bucket upper bounds in tenths of a millisecond (so 2.5 ms is exact):
/// 1 ms to 10 s.
const BOUNDS_TENTHS_MS: [u64; 13] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
];

/// The node's coarse clock, Unix milliseconds as of the latest delivery batch.
static CLOCK_MS: AtomicU64 = AtomicU64::new(0);

/// Refreshes the coarse clock: once per delivery batch, before its
/// messages are queued.
pub fn tick() {
    CLOCK_MS.store(protocol::id::now_ms(), Ordering::Relaxed);
}

/// The coarse clock (never behind the latest [`tick`]).
pub fn clock_ms() -> u64 {
    CLOCK_MS.load(Ordering::Relaxed)
}

/// Threads' shares of the histogram: more than the runtime has workers.
const STRIPES: usize = 16;

/// One thread's share: deliveries per bucket (not cumulative; the last is
/// `+Inf`) and their sum, on a cache line of its own.
#[repr(align(128))]
struct Stripe {
    buckets: [AtomicU64; BOUNDS_TENTHS_MS.len() + 1],
    sum_ms: AtomicU64,
}

impl Stripe {
    const fn new() -> Stripe {
        Stripe {
            buckets: [const { AtomicU64::new(0) }; BOUNDS_TENTHS_MS.len() + 1],
            sum_ms: AtomicU64::new(0),
        }
    }
}

pub struct Latency {
    stripes: [Stripe; STRIPES],
}

pub static LATENCY: Latency = Latency::new();

/// Which stripe this thread writes: handed out in turn as threads first
/// observe.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    MINE.with(|i| *i)
}

impl Latency {
    const fn new() -> Latency {
        Latency {
            stripes: [const { Stripe::new() }; STRIPES],
        }
    }

    /// One message with id `msg_id` written at `now_ms` (the coarse clock).
    pub fn observe(&self, msg_id: u64, now_ms: u64) {
        let ms = now_ms.saturating_sub(protocol::id::millis(msg_id));
        let tenths = ms.saturating_mul(10);
        let i = BOUNDS_TENTHS_MS.partition_point(|&b| b < tenths);
        let stripe = &self.stripes[stripe_index()];
        stripe.buckets[i].fetch_add(1, Ordering::Relaxed);
        stripe.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Appends the histogram, every stripe summed, in the Prometheus text
    /// format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {NAME} {HELP}");
        let _ = writeln!(out, "# TYPE {NAME} histogram");
        let mut cumulative = 0;
        for i in 0..=BOUNDS_TENTHS_MS.len() {
            cumulative += self
                .stripes
                .iter()
                .map(|s| s.buckets[i].load(Ordering::Relaxed))
                .sum::<u64>();
            match BOUNDS_TENTHS_MS.get(i) {
                Some(&b) => {
                    let _ = writeln!(out, "{NAME}_bucket{{le=\"{}\"}} {cumulative}", b as f64 / 10_000.0);
                }
                None => {
                    let _ = writeln!(out, "{NAME}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum_ms: u64 = self.stripes.iter().map(|s| s.sum_ms.load(Ordering::Relaxed)).sum();
        let sum = sum_ms as f64 / 1000.0;
        let _ = writeln!(out, "{NAME}_sum {sum}");
        let _ = writeln!(out, "{NAME}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_by_millisecond_and_renders_cumulative() {
        let h = Latency::new();
        let id = |ms: u64| protocol::id::pack(ms, 3);
        h.observe(id(1_000), 1_000); // 0 ms: le 0.001
        h.observe(id(1_000), 1_001); // 1 ms: le 0.001
        h.observe(id(1_000), 1_002); // 2 ms: le 0.0025
        h.observe(id(1_000), 1_700); // 700 ms: le 1
        h.observe(id(1_000), 900); // clock behind the id: 0
        // Another thread writes another stripe; the scrape sums them.
        std::thread::scope(|s| {
            s.spawn(|| h.observe(id(1_000), 60_000)); // 59 s: +Inf
        });
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains(&format!("{NAME}_bucket{{le=\"0.001\"}} 3\n")), "{out}");
        assert!(out.contains(&format!("{NAME}_bucket{{le=\"0.0025\"}} 4\n")), "{out}");
        assert!(out.contains(&format!("{NAME}_bucket{{le=\"0.5\"}} 4\n")), "{out}");
        assert!(out.contains(&format!("{NAME}_bucket{{le=\"1\"}} 5\n")), "{out}");
        assert!(out.contains(&format!("{NAME}_bucket{{le=\"10\"}} 5\n")), "{out}");
        assert!(out.contains(&format!("{NAME}_bucket{{le=\"+Inf\"}} 6\n")), "{out}");
        assert!(out.contains(&format!("{NAME}_count 6\n")), "{out}");
        assert!(out.contains(&format!("{NAME}_sum 59.703\n")), "{out}");
    }
}
