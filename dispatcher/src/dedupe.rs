//! Send nonces (protocol 1.1): a `send` that repeats a (user, room, nonce)
//! seen within the dedupe window gets the first message's id back, and
//! nothing is stored or delivered again, so a client may retry a send
//! whose reply it lost.
//!
//! [`nonce_hash`] names a (user, room, nonce) in 128 bits (a keyed SipHash,
//! so clients cannot make two of theirs collide). The Redis bus keeps one
//! key per nonce beside the room's stream (`redis_bus::publish`); the
//! in-process bus keeps [`Recent`] in memory, and the embedded store keeps
//! each stored message's nonce too (`HistoryStore::nonce`), for after a
//! restart.

use std::collections::{HashMap, VecDeque};
use std::hash::Hasher;
use std::time::{Duration, Instant};

use siphasher::sip128::{Hasher128, SipHasher13};

/// The default dedupe window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);

/// Nonces [`Recent`] holds at most; past it the oldest go early (the window
/// shrinks under a load that would otherwise take the node's memory).
const MAX_RECENT: usize = 1_000_000;

/// 128 bits naming `nonce` of `user` in `room`, under `key`.
pub fn nonce_hash(key: (u64, u64), user: &str, room: &str, nonce: &str) -> u128 {
    let mut h = SipHasher13::new_with_keys(key.0, key.1);
    // Lengths first: ("ab","c") and ("a","bc") differ.
    for part in [user, room, nonce] {
        h.write_u64(part.len() as u64);
        h.write(part.as_bytes());
    }
    h.finish128().as_u128()
}

/// The nonces of the last window and the ids they were given, oldest first.
pub struct Recent {
    window: Duration,
    ids: HashMap<u128, u64>,
    order: VecDeque<(Instant, u128)>,
}

impl Recent {
    pub fn new(window: Duration) -> Recent {
        Recent {
            window,
            ids: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The id the nonce was given within the window, if any.
    pub fn get(&mut self, nonce: u128, now: Instant) -> Option<u64> {
        self.expire(now);
        self.ids.get(&nonce).copied()
    }

    pub fn insert(&mut self, nonce: u128, id: u64, now: Instant) {
        self.expire(now);
        if self.ids.len() >= MAX_RECENT
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        if self.ids.insert(nonce, id).is_none() {
            self.order.push_back((now, nonce));
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, nonce)) = self.order.front() {
            if now.duration_since(at) < self.window {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&nonce);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_remembered_for_the_window_only() {
        let mut r = Recent::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let a = nonce_hash((1, 2), "u1", "r1", "n1");
        r.insert(a, 7, t0);
        assert_eq!(r.get(a, t0 + Duration::from_secs(9)), Some(7));
        assert_eq!(r.get(a, t0 + Duration::from_secs(10)), None, "the window passed");
    }

    #[test]
    fn the_hash_separates_its_parts_and_keys() {
        let h = |k, u, r, n| nonce_hash(k, u, r, n);
        assert_ne!(h((1, 2), "ab", "c", "n"), h((1, 2), "a", "bc", "n"));
        assert_ne!(h((1, 2), "u", "r", "n"), h((1, 3), "u", "r", "n"));
        assert_ne!(h((1, 2), "u1", "r", "n"), h((1, 2), "u2", "r", "n"));
        assert_eq!(h((1, 2), "u", "r", "n"), h((1, 2), "u", "r", "n"));
    }
}
