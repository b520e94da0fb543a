//! The line protocol between a `--workers` parent and its worker processes,
//! worker side: what a worker writes on its stdout ([`Line`], one JSON
//! object a line) and its wait for the parent's `go` on stdin.
//!
//! Kept apart from `workers` (the parent, and the worker's entry point,
//! which starts a run) so that the run, which says `ready`, and the
//! progress task, which writes `progress`, do not import it back.

use std::io::{BufRead, Write};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::stats::Snapshot;
use crate::tally::Tally;

/// One line a worker writes on its stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// Members connected and in their rooms, senders connected.
    Ready {
        connected: u64,
    },
    Progress(Snapshot),
    Done(Box<Tally>),
}

/// Writes one line to the parent.
pub fn emit(line: &Line) {
    let text = serde_json::to_string(line).expect("a serializable line");
    let mut out = std::io::stdout().lock();
    // The parent gone means the run is over; nothing to do about it here.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Worker side: says it is ready, then waits for the parent's `go`.
pub(crate) async fn ready_then_wait(connected: u64) -> anyhow::Result<()> {
    emit(&Line::Ready { connected });
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if line.trim() != "go" {
            bail!("worker: expected `go` from the parent, got {line:?}");
        }
        // The parent keeps our stdin open until we exit: its end means the
        // parent was killed, and a worker must not outlive it.
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            eprintln!("loadtest worker: the parent is gone; exiting");
            std::process::exit(1);
        });
        Ok(())
    })
    .await?
}
