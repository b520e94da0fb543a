//! New connections per second per client address: a token bucket per
//! address (IPv6 per /64, what one subscriber is usually given), so one
//! address opening and closing connections as fast as it can is refused
//! at the door instead of costing a handshake each.
//!
//! The table holds addresses seen within the time a bucket takes to
//! refill; past [`MAX_ENTRIES`] it drops the full ones, and if still over
//! (a storm from very many addresses) it admits addresses it does not know
//! rather than grow: the node cap and the memory budget still hold.

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Addresses tracked at most.
const MAX_ENTRIES: usize = 100_000;

pub struct IpRates {
    rate: f64,
    burst: f64,
    table: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// The key of `ip`: itself, or its /64 for IPv6.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl IpRates {
    /// `rate` new connections per second per address, in bursts of
    /// `burst`; `None` when `rate` is 0 (off).
    pub fn new(rate: f64, burst: u32) -> Option<IpRates> {
        (rate > 0.0).then(|| IpRates {
            rate,
            burst: f64::from(burst.max(1)),
            table: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one new connection of `ip`: `false` when it is over its rate.
    pub fn take(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut table = self.table.lock();
        if table.len() >= MAX_ENTRIES {
            let (rate, burst) = (self.rate, self.burst);
            table.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
            if table.len() >= MAX_ENTRIES && !table.contains_key(&key(ip)) {
                return true;
            }
        }
        let (tokens, at) = table.entry(key(ip)).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_its_rate() {
        let r = IpRates::new(0.001, 3).unwrap();
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        assert!((0..3).all(|_| r.take(a)), "the burst");
        assert!(!r.take(a), "then only the (slow) rate");
        assert!(r.take("198.51.100.8".parse().unwrap()), "another address has its own");
        // One IPv6 subscriber's /64 is one address.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!((0..3).all(|i| r.take(v6(&format!("2001:db8:1:2::{i}")))));
        assert!(!r.take(v6("2001:db8:1:2:ffff::1")), "same /64");
        assert!(r.take(v6("2001:db8:1:3::1")), "another /64");
        assert!(IpRates::new(0.0, 10).is_none(), "0 is off");
    }
}
