//! The standard process metrics (`process_*`, the names Prometheus client
//! libraries use), read from `/proc` at scrape time: the exporter we use
//! has no process collector. Open files against their limit matter most
//! here: every connection is a file descriptor, and a node at its limit
//! refuses connections (`accept` fails).

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Clock ticks per second of `/proc/self/stat`'s times (`USER_HZ`, which
/// Linux fixes at 100 for user space on every architecture it runs on).
const USER_HZ: f64 = 100.0;

/// When the metrics were installed, as the process's start time.
static START: OnceLock<f64> = OnceLock::new();

/// Records the process's start time (call once, early).
pub fn mark_start() {
    START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    });
}

/// Appends the process metrics it can read, in the Prometheus text format.
pub fn render(out: &mut String) {
    if let Some(n) = open_fds() {
        metric(out, "process_open_fds", "gauge", "Open file descriptors.", n as f64);
    }
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        metric(
            out,
            "process_max_fds",
            "gauge",
            "Most open file descriptors allowed (the soft RLIMIT_NOFILE).",
            soft as f64,
        );
    }
    if let Some(bytes) = resident_bytes() {
        metric(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            bytes as f64,
        );
    }
    if let Some(secs) = cpu_seconds() {
        metric(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            secs,
        );
    }
    if let Some(&start) = START.get() {
        metric(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            start,
        );
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

/// Entries of `/proc/self/fd`, less the one the listing itself opened.
fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count().saturating_sub(1))
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * crate::admission::page_size().unwrap_or(4096))
}

/// `utime + stime` of `/proc/self/stat` (fields 14 and 15, counted after
/// the command name, which may hold spaces and parentheses).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        super::mark_start();
        let mut out = String::new();
        super::render(&mut out);
        for name in [
            "process_open_fds",
            "process_max_fds",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
        ] {
            assert!(out.contains(&format!("\n{name} ")), "{name} missing in {out}");
        }
        assert!(super::open_fds().is_some_and(|n| n >= 3));
    }
}
