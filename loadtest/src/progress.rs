//! Live progress of a run, once a second: a [`Ticker`] line on stderr, or,
//! in a worker process, a `progress` [`Line`] on stdout for the parent.
//!
//! Reads the run's counters through [`Shared::snapshot`]; sits above both
//! [`crate::stats`] (what is shown) and [`crate::link`] (where a worker
//! writes it), which therefore need not know about each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::link::{self, Line};
use crate::shared::Shared;
use crate::stats::Ticker;

/// The running progress task; [`Progress::stop`] ends it.
pub(crate) struct Progress {
    stop: Arc<AtomicU64>,
}

impl Progress {
    pub(crate) fn start(shared: Arc<Shared>, quiet: bool) -> Progress {
        let stop = Arc::new(AtomicU64::new(0));
        let worker = shared.args.worker_index.is_some();
        if worker || !quiet {
            let flag = stop.clone();
            tokio::spawn(async move {
                let mut ticker = (!worker).then(Ticker::new);
                while flag.load(Ordering::Relaxed) == 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let now = shared.snapshot();
                    match &mut ticker {
                        Some(t) => t.show(now),
                        None => link::emit(&Line::Progress(now)),
                    }
                }
            });
        }
        Progress { stop }
    }

    pub(crate) fn stop(&self) {
        self.stop.store(1, Ordering::Relaxed);
    }
}
