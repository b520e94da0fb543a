//! Splitting one run over several worker processes (`--workers N`).
//!
//! One process can hold at most `ulimit -Hn` sockets (20,000 on these
//! machines), and one tokio runtime's load generator is bounded by its own
//! CPU; a run of 100,000 connections therefore needs several processes. The
//! parent starts `N` copies of its own executable with the same arguments
//! plus `--worker-index i`; each takes every `N`-th connection, sender and
//! reader, and `1/N` of the ramp, send and churn rates.
//!
//! The parent and its workers speak JSON lines ([`Line`], defined with the
//! worker's side of the exchange in `link.rs`): a worker writes
//! `ready` when its members are in their rooms and its senders connected,
//! then waits for `go` on its stdin, so that nobody sends before every
//! member of every worker has joined; then one `progress` line a second,
//! and at the end its whole [`Tally`]. The parent shows the summed progress,
//! merges the tallies (counts, room membership, histograms) and builds the
//! one report, so expected deliveries count members on every worker.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::args::Args;
pub use crate::link::{Line, emit};
use crate::report::Report;
use crate::stats::{Snapshot, Ticker};
use crate::tally::Tally;

/// Worker side: runs this worker's share and writes its tally.
pub async fn serve(args: Args) -> anyhow::Result<()> {
    let tally = crate::scenario::run_tally(args).await?;
    emit(&Line::Done(Box::new(tally)));
    Ok(())
}

/// Kills the workers still running when the parent returns early.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Parent side: starts `args.workers` copies of `exe` with `argv` (this
/// process's own arguments) plus `--worker-index`, coordinates them, and
/// returns the merged report.
pub fn run_parent(exe: &Path, argv: &[std::ffi::OsString], args: &Args) -> anyhow::Result<Report> {
    let n = args.workers;
    let (tx, rx) = mpsc::channel::<(usize, anyhow::Result<Line>)>();
    let mut workers = Workers(Vec::new());
    let mut inputs: Vec<ChildStdin> = Vec::new();
    for i in 0..n {
        let mut child = Command::new(exe)
            .args(argv)
            .args(["--worker-index", &i.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting worker {i}: {}", exe.display()))?;
        inputs.push(child.stdin.take().expect("piped stdin"));
        let out = child.stdout.take().expect("piped stdout");
        workers.0.push(child);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let parsed = line
                    .map_err(anyhow::Error::from)
                    .and_then(|l| serde_json::from_str::<Line>(&l).with_context(|| format!("worker {i} wrote {l:?}")));
                let done = matches!(parsed, Ok(Line::Done(_)));
                if tx.send((i, parsed)).is_err() || done {
                    return;
                }
            }
            let _ = tx.send((i, Err(anyhow::anyhow!("worker {i} ended without its tally"))));
        });
    }
    drop(tx);

    // Bounded: ramping takes connections / ramp seconds, plus slack for
    // slow handshakes; sending takes duration + drain.
    let ramp_limit = Duration::from_secs_f64(args.connections as f64 / args.ramp) + Duration::from_secs(120);
    let run_limit = args.duration + args.drain + Duration::from_secs(120);
    let mut ticker = (!args.quiet).then(Ticker::new);
    let mut progress = vec![Snapshot::default(); n];
    let mut ready = 0;
    let mut connected = 0;
    let mut tallies: Vec<Option<Tally>> = (0..n).map(|_| None).collect();
    let mut deadline = Instant::now() + ramp_limit;
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    while tallies.iter().any(Option::is_none) {
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "workers did not finish in time ({} of {n} ready, {} done)",
                ready,
                tallies.iter().flatten().count()
            );
        }
        let wait = next_tick.min(deadline).saturating_duration_since(now);
        match rx.recv_timeout(wait) {
            Ok((i, Ok(Line::Ready { connected: c }))) => {
                ready += 1;
                connected += c;
                progress[i].connected = c;
                if ready == n {
                    if let Some(path) = &args.ready_file {
                        std::fs::write(path, format!("{connected}\n"))
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                    for (w, input) in inputs.iter_mut().enumerate() {
                        writeln!(input, "go").with_context(|| format!("starting worker {w}"))?;
                    }
                    deadline = Instant::now() + run_limit;
                }
            }
            Ok((i, Ok(Line::Progress(p)))) => progress[i] = p,
            Ok((i, Ok(Line::Done(t)))) => tallies[i] = Some(*t),
            Ok((_, Err(e))) => return Err(e.context("a worker failed (its own message, if any, is above)")),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("every worker ended before reporting"),
        }
        if Instant::now() >= next_tick {
            next_tick += Duration::from_secs(1);
            if let Some(t) = &mut ticker {
                t.show(Snapshot::sum(&progress));
            }
        }
    }
    for (i, child) in workers.0.iter_mut().enumerate() {
        let status = child.wait().with_context(|| format!("waiting for worker {i}"))?;
        if !status.success() {
            bail!("worker {i} exited with {status}");
        }
    }
    workers.0.clear();
    let mut total = Tally::default();
    for t in tallies.into_iter().flatten() {
        total.merge(t);
    }
    Ok(total.report(args))
}
