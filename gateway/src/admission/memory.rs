//! The node's memory budget: new upgrades are refused while the process's
//! resident memory is over it, so a flood of connections runs into 503s
//! instead of the OOM killer. The resident size is read from
//! `/proc/self/statm` at most every [`SAMPLE_EVERY`], by whichever upgrade
//! finds the last sample stale, and cached in an atomic: upgrades in
//! between read no file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How old a resident-size sample may be.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Share of the machine's (or the cgroup's) memory the default budget takes.
const DEFAULT_SHARE_PERCENT: u64 = 80;

pub struct Memory {
    /// Bytes; 0: no budget (nothing to compare with).
    budget: u64,
    page_size: u64,
    resident: AtomicU64,
    /// When `resident` was read, in ms since `start`.
    sampled_ms: AtomicU64,
    start: Instant,
}

impl Memory {
    /// `configured` bytes, or with 0 the default: 80% of the cgroup's
    /// memory limit, or of the machine's memory when there is none.
    pub fn new(configured: u64) -> Memory {
        let budget = if configured > 0 {
            configured
        } else {
            memory_limit().map_or(0, |limit| limit / 100 * DEFAULT_SHARE_PERCENT)
        };
        let page_size = page_size().unwrap_or(4096);
        let m = Memory {
            budget,
            page_size,
            resident: AtomicU64::new(0),
            sampled_ms: AtomicU64::new(0),
            start: Instant::now(),
        };
        if budget > 0 && m.read_resident().is_none() {
            tracing::warn!("cannot read /proc/self/statm: the memory budget is not enforced");
        }
        m.resident.store(m.read_resident().unwrap_or(0), Ordering::Relaxed);
        m
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether the process's resident memory (sampled at most
    /// [`SAMPLE_EVERY`] ago) is over the budget.
    pub fn over_budget(&self) -> bool {
        if self.budget == 0 {
            return false;
        }
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.sampled_ms.load(Ordering::Relaxed);
        // One upgrade takes the stale sample and reads the file; the
        // others use the cached value meanwhile.
        if now.saturating_sub(last) >= SAMPLE_EVERY.as_millis() as u64
            && self
                .sampled_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && let Some(bytes) = self.read_resident()
        {
            self.resident.store(bytes, Ordering::Relaxed);
        }
        self.resident.load(Ordering::Relaxed) > self.budget
    }

    /// Resident bytes: `/proc/self/statm`'s second field, in pages.
    fn read_resident(&self) -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * self.page_size)
    }
}

/// The smallest of the cgroup's memory limit (v2 `memory.max` of the
/// process's own cgroup or of the root, v1 `memory.limit_in_bytes`) and
/// the machine's `MemTotal`. A cgroup without a limit says `max` (v2) or
/// a number past any real memory (v1), which the minimum discards.
pub fn memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)));
    let mut candidates = Vec::new();
    if let Some(path) = own.filter(|p| p != "/") {
        candidates.push(format!("/sys/fs/cgroup{path}/memory.max"));
    }
    candidates.push("/sys/fs/cgroup/memory.max".to_owned());
    candidates.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".to_owned());
    let cgroup = candidates
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
        .min();
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let kib: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    });
    match (cgroup, total) {
        (Some(c), Some(t)) => Some(c.min(t)),
        (c, t) => c.or(t),
    }
}

/// The page size from the auxiliary vector the kernel gave the process
/// (`AT_PAGESZ`): pairs of native words, read without `unsafe`.
pub(crate) fn page_size() -> Option<u64> {
    const AT_PAGESZ: u64 = 6;
    const WORD: usize = std::mem::size_of::<usize>();
    let auxv = std::fs::read("/proc/self/auxv").ok()?;
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let word = |b: &[u8]| usize::from_ne_bytes(b.try_into().expect("a word")) as u64;
        (word(&pair[..WORD]) == AT_PAGESZ).then(|| word(&pair[WORD..]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(page_size().is_some_and(|p| p >= 4096 && p.is_power_of_two()));
        let limit = memory_limit().expect("MemTotal at least");
        assert!(limit > 16 << 20, "{limit}");
        let m = Memory::new(0);
        assert_eq!(m.budget(), limit / 100 * 80);
        let resident = m.read_resident().unwrap();
        assert!(resident > 1 << 20, "{resident}");
        assert!(!m.over_budget());
        assert!(Memory::new(1 << 20).over_budget(), "a test binary is over 1 MiB");
    }
}
