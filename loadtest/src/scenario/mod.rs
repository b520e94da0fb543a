//! Running one scenario: [`run_tally`] is the sequence every scenario
//! shares, in named steps; the scenario-specific parts are in the
//! submodules ([`fanout`] also runs `reconnect`; `idle` only waits).
//!
//! 1. ramp the members up (each a task owning its connection, see
//!    `member.rs`), at `--ramp` per second;
//! 2. open the scenario's own connections (senders, history readers);
//! 3. pass the start gate (`--ready-file`, or every worker ready);
//! 4. run for `--duration` (fan-out then drains in-flight deliveries);
//! 5. stop, and tally what was counted.

mod churn;
mod fanout;
mod history;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::args::{Args, Scenario};
use crate::conn::Ws;
use crate::link;
use crate::member::member;
use crate::progress::Progress;
use crate::report::Report;
use crate::sender::Sender;
use crate::shared::Shared;
use crate::tally::Tally;

/// Runs the scenario and returns its report.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let tally = run_tally(args.clone()).await?;
    Ok(tally.report(&args))
}

/// Runs the scenario (this process's share of it, in a worker) and returns
/// what it counted.
pub async fn run_tally(args: Args) -> anyhow::Result<Tally> {
    args.validate()?;
    let shared = Arc::new(Shared::new(args.clone())?);
    let progress = Progress::start(shared.clone(), args.quiet);
    // Held to the end: a member stops when the storm sender is gone.
    let (storm, storm_rx) = watch::channel(0u32);

    let (mut tasks, ramp_secs) = ramp_members(&shared, &storm_rx).await;

    // Senders and history readers connect before the clock starts.
    let stage = Stage::open(&shared).await?;
    start_gate(&shared).await?;

    let send_started = Instant::now();
    let last_delivery = stage.run(&shared, &storm, &mut tasks).await;
    let mut send_secs = last_delivery.map_or(0.0, |at| at.duration_since(send_started).as_secs_f64());
    if send_secs == 0.0 {
        send_secs = send_started.elapsed().as_secs_f64();
    }

    progress.stop();
    for t in tasks {
        t.abort();
    }
    shared.samples.flush()?;
    Ok(shared.tally(ramp_secs, send_secs))
}

/// Starts this process's share of the members at the ramp rate (at most
/// 256 joining at once) and returns when each has joined or failed: their
/// tasks (aborted at the end) and the seconds the ramp took.
async fn ramp_members(shared: &Arc<Shared>, storm: &watch::Receiver<u32>) -> (Vec<JoinHandle<()>>, f64) {
    let args = &shared.args;
    let mut tasks = Vec::new();
    let ramp = args.ramp / args.parts();
    let ramp_started = Instant::now();
    let mut joining = FuturesUnordered::new();
    let mut mine = args.share(args.connections).enumerate().peekable();
    while mine.peek().is_some() || !joining.is_empty() {
        while joining.len() < 256
            && let Some(&(k, index)) = mine.peek()
        {
            let due = ramp_started + Duration::from_secs_f64(k as f64 / ramp);
            if Instant::now() < due {
                break;
            }
            mine.next();
            let room = index % args.rooms;
            let (tx, rx) = oneshot::channel();
            tasks.push(tokio::spawn(member(shared.clone(), index, room, storm.clone(), tx)));
            joining.push(async move { (room, rx.await.unwrap_or(false)) });
        }
        let wait = tokio::time::sleep(Duration::from_millis(5));
        tokio::select! {
            Some((room, ok)) = joining.next() => if ok {
                shared.counters.connected.fetch_add(1, Ordering::Relaxed);
                shared.members[room].fetch_add(1, Ordering::Relaxed);
            },
            _ = wait => {}
        }
    }
    (tasks, ramp_started.elapsed().as_secs_f64())
}

/// Holds the clock until the members are in. A worker says `ready` and
/// waits for the parent's `go` (every worker's members are in their rooms
/// before anyone sends); a lone process writes `--ready-file` (scripts
/// measure the target's memory from then on).
async fn start_gate(shared: &Shared) -> anyhow::Result<()> {
    let args = &shared.args;
    if args.worker_index.is_some() {
        link::ready_then_wait(shared.counters.connected.load(Ordering::Relaxed)).await?;
    } else if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{}\n", shared.counters.connected.load(Ordering::Relaxed)))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A scenario's part of the run, with the connections it opens after the
/// members and before the clock starts.
enum Stage {
    /// `fanout`, `reconnect` and `chat`.
    Fanout(Vec<Sender>),
    History(Vec<Ws>),
    Churn,
    Idle,
}

impl Stage {
    async fn open(shared: &Shared) -> anyhow::Result<Stage> {
        Ok(match shared.args.scenario {
            Scenario::Fanout | Scenario::Reconnect | Scenario::Chat => {
                Stage::Fanout(fanout::open_senders(shared).await?)
            }
            Scenario::History => Stage::History(history::open_readers(shared).await?),
            Scenario::Churn => Stage::Churn,
            Scenario::Idle => Stage::Idle,
        })
    }

    /// Runs for the duration. Returns when the last delivery was seen
    /// where that is when the run's rates end (fan-out: not at the end of
    /// the drain).
    async fn run(
        self,
        shared: &Arc<Shared>,
        storm: &watch::Sender<u32>,
        tasks: &mut Vec<JoinHandle<()>>,
    ) -> Option<Instant> {
        match self {
            Stage::Fanout(senders) => Some(fanout::run(shared, senders, storm, tasks).await),
            Stage::History(readers) => {
                history::run(shared, readers).await;
                None
            }
            Stage::Churn => {
                churn::run(shared).await;
                None
            }
            Stage::Idle => {
                tokio::time::sleep(shared.args.duration).await;
                None
            }
        }
    }
}
