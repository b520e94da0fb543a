//! `churn`: while the members are held, connections open, join a room and
//! close at `--churn-rate` per second (this process's share of it), at most
//! 512 at a time; each open-to-joined time is recorded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::conn::{Join, open};
use crate::shared::Shared;

/// Churns for the duration, then waits for the connections under way.
pub(super) async fn run(shared: &Arc<Shared>) {
    let args = &shared.args;
    let until = Instant::now() + args.duration;
    let started = Instant::now();
    let rate = args.churn_rate / args.parts();
    let (first, step) = args.slot();
    let mut opened = 0u64;
    let mut churning = FuturesUnordered::new();
    while Instant::now() < until || !churning.is_empty() {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while opened < due && Instant::now() < until && churning.len() < 512 {
            // The run's n-th churned connection (workers interleave); its
            // index is past the members', so it is another user.
            let n = opened as usize * step + first;
            let index = args.connections + (n % 50_000);
            let room = Join::new(args.room(n % args.rooms));
            let shared = shared.clone();
            churning.push(async move {
                let begun = Instant::now();
                let ok = open(&shared, index, &[room]).await.is_ok();
                (ok, begun.elapsed())
            });
            opened += 1;
        }
        let wait = tokio::time::sleep(Duration::from_millis(5));
        tokio::select! {
            Some((ok, took)) = churning.next() => {
                // Dropped at once: the connection closes.
                if ok {
                    shared.counters.churned.fetch_add(1, Ordering::Relaxed);
                    shared.churn.record(took);
                } else {
                    shared.counters.churn_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = wait => {}
        }
    }
}
