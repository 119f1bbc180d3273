//! The one way chatferry waits between retries: exponential and capped,
//! with full jitter. The wait before retry `n` (1-based) is uniform in
//! `[0, min(cap, base × 2^(n−1))]` ("Exponential Backoff And Jitter", AWS
//! Architecture Blog: full jitter spreads competing retriers best).
//!
//! backon's own `with_jitter` adds a random part *on top of* the
//! exponential delay (`[d, 2d)`), which is not full jitter; so the schedule
//! here is ours, and [`Backoff::iter`] is a plain `Iterator<Item =
//! Duration>`, which backon takes as a backoff for `Retryable::retry`.

use rand::Rng;
use std::time::Duration;

/// An exponential, capped schedule with full jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    max_times: Option<u32>,
}

impl Backoff {
    /// Retries for ever: `base` doubles per retry up to `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            max_times: None,
        }
    }

    /// At most `n` retries (for backon: the iterator ends after `n`).
    pub const fn with_max_times(mut self, n: u32) -> Backoff {
        self.max_times = Some(n);
        self
    }

    /// The longest wait before retry `retry` (1-based; 0 counts as 1).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(32);
        let cap = self.cap.max(self.base);
        self.base.saturating_mul(1u32 << doublings.min(31)).min(cap)
    }

    /// The wait before retry `retry`: uniform in `[0, ceiling(retry)]`.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry).as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=ceiling))
    }

    /// The waits before retries 1, 2, … (ends after `max_times`, if set).
    pub fn iter(self) -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
        let last = self.max_times.unwrap_or(u32::MAX);
        (1..=last).map(move |n| self.delay(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let ms: Vec<u128> = (0..8).map(|n| B.ceiling(n).as_millis()).collect();
        assert_eq!(ms, [100, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn delays_are_fully_jittered_below_the_ceiling() {
        let d: Vec<Duration> = (0..2000).map(|_| B.delay(3)).collect();
        assert!(d.iter().all(|d| *d <= Duration::from_millis(400)));
        // Full jitter reaches down to zero, not just to the exponential delay.
        assert!(d.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(d.iter().any(|d| *d > Duration::from_millis(300)));
    }

    #[test]
    fn the_iterator_stops_after_max_times() {
        assert_eq!(B.with_max_times(5).iter().count(), 5);
        assert_eq!(B.iter().take(100).count(), 100);
    }
}
