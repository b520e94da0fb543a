//! `fanout` and `reconnect`: senders publish at the total `--rate` to the
//! members' rooms for `--duration`, then deliveries still in flight are
//! drained. In `reconnect`, halfway through, every member is told (the
//! storm signal) to drop its connection and resume with `since`.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::args::Scenario;
use crate::sender::Sender;
use crate::shared::Shared;

/// Opens this process's share of the senders, before the clock starts.
pub(super) async fn open_senders(shared: &Shared) -> anyhow::Result<Vec<Sender>> {
    let mut senders = Vec::new();
    for s in shared.args.share(shared.args.senders) {
        senders.push(Sender::open(shared, s).await?);
    }
    Ok(senders)
}

/// Sends for the duration and drains; returns when the last delivery was
/// seen. The senders' read halves go into `tasks` (aborted at the end).
pub(super) async fn run(
    shared: &Arc<Shared>,
    senders: Vec<Sender>,
    storm: &watch::Sender<u32>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Instant {
    let args = &shared.args;
    let until = Instant::now() + args.duration;
    let per_sender = args.rate / args.senders as f64;
    let mut sending = Vec::new();
    for sender in senders {
        let (reader, sends) = sender.start(shared, per_sender, until);
        tasks.push(reader);
        sending.push(sends);
    }
    if args.scenario == Scenario::Reconnect {
        // Halfway: every member drops and resumes with `since`.
        tokio::time::sleep(args.duration / 2).await;
        let _ = storm.send(1);
    }
    for s in sending {
        let _ = s.await;
    }
    // Rates count to the last delivery, not to the end of the drain.
    shared.drain().await
}
