//! `--samples FILE`: every ack and delivery latency as a line
//! `<kind> <sent_unix_us> <latency_us>` (kind `a` or `d`), so a script can
//! split one long run into phases by send time (benches/abuse.sh compares
//! interleaved attack and quiet windows of one probe run).
//!
//! A leaf like `stats`: one buffered file behind a lock, written per
//! sample only when asked for (a probe's few hundred lines a second).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use parking_lot::Mutex;

/// The open sample file, or nothing when `--samples` is not given.
#[derive(Default)]
pub(crate) struct Samples(Option<Mutex<BufWriter<File>>>);

impl Samples {
    pub(crate) fn create(path: Option<&Path>) -> anyhow::Result<Samples> {
        let Some(path) = path else {
            return Ok(Samples(None));
        };
        let file = File::create(path).with_context(|| format!("creating --samples file {}", path.display()))?;
        Ok(Samples(Some(Mutex::new(BufWriter::new(file)))))
    }

    /// One latency of `kind` (`'a'` ack, `'d'` delivery) for a message
    /// sent at `sent_us` (wall clock, microseconds).
    pub(crate) fn record(&self, kind: char, sent_us: u64, latency_us: u64) {
        if let Some(w) = &self.0 {
            // A full disk loses samples, not the run.
            let _ = writeln!(w.lock(), "{kind} {sent_us} {latency_us}");
        }
    }

    pub(crate) fn flush(&self) -> anyhow::Result<()> {
        if let Some(w) = &self.0 {
            w.lock().flush().context("writing --samples file")?;
        }
        Ok(())
    }
}
