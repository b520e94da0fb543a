//! Message ids: 64-bit, time-ordered, strictly ascending within a room.
//!
//! The order-giver of a room (the in-process bus on one node, the room's
//! Redis stream in a cluster) mints them as `ms << 22 | seq`, the same
//! packing a Redis stream entry id `ms-seq` gets, so ids from either source
//! compare the same way and `ts` can be read back from the id.

/// Bits left for the per-millisecond sequence.
pub const SEQ_BITS: u32 = 22;
pub const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;

pub fn pack(ms: u64, seq: u64) -> u64 {
    (ms << SEQ_BITS) | (seq & SEQ_MAX)
}

pub fn millis(id: u64) -> u64 {
    id >> SEQ_BITS
}

pub fn seq(id: u64) -> u64 {
    id & SEQ_MAX
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The next id after `last` at wall-clock `now_ms`: the clock's id when it
/// is ahead, else `last + 1`, so ids never go back when the clock does.
pub fn next_after(last: u64, now_ms: u64) -> u64 {
    let candidate = pack(now_ms, 0);
    if candidate > last { candidate } else { last + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_unpacks() {
        let id = pack(1_700_000_000_123, 7);
        assert_eq!(millis(id), 1_700_000_000_123);
        assert_eq!(seq(id), 7);
    }

    #[test]
    fn next_is_strictly_ascending_even_when_the_clock_goes_back() {
        let a = next_after(0, 1000);
        let b = next_after(a, 1000);
        let c = next_after(b, 999);
        let d = next_after(c, 1001);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert_eq!(millis(d), 1001);
    }
}
