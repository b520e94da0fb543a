//! Exponential backoff with full jitter, for every loop that reconnects to
//! Redis (shard readers, persisters). Each wait is drawn uniformly from
//! zero to a ceiling that doubles per failure up to a cap, so that after an
//! outage the readers and persisters of every node do not come back in
//! lockstep and hit Redis all at once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// First ceiling `base`, doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            failures: 0,
        }
    }

    /// The ceiling of the next wait: `base * 2^failures`, at most `cap`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.failures.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait (uniform in `[0, ceiling]`), counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::random_range(0..=nanos))
    }

    /// After a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Sleeps the next wait; false when `cancel` fired first.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(b.ceiling().as_millis());
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(*ceilings.last().unwrap() as u64), "{d:?}");
        }
        assert_eq!(ceilings, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(2), "no overflow after many failures");
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(50));
    }

    #[test]
    fn waits_spread_over_the_whole_range() {
        // Full jitter: draws cover [0, ceiling] with a mean near half of it,
        // so nodes that failed together do not retry together.
        let ceiling = Duration::from_secs(1);
        let draws: Vec<Duration> = (0..4000).map(|_| Backoff::new(ceiling, ceiling).next_delay()).collect();
        assert!(draws.iter().all(|d| *d <= ceiling));
        let mean = draws.iter().sum::<Duration>() / draws.len() as u32;
        assert!(
            (Duration::from_millis(400)..Duration::from_millis(600)).contains(&mean),
            "mean {mean:?}"
        );
        assert!(draws.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(900)));
    }

    #[tokio::test]
    async fn wait_stops_when_cancelled() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!b.wait(&cancel).await);
    }
}
