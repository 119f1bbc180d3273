//! Per-target token buckets.
//!
//! A strict provider counts calls in any one-second window, so the buckets
//! allow no burst: calls are spaced `1 / rate` apart.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A bucket that lets `rate_per_sec` calls through per second, one at a time.
pub fn bucket(rate_per_sec: f64) -> DefaultDirectRateLimiter {
    let rate = if rate_per_sec.is_finite() && rate_per_sec > 0.0 {
        rate_per_sec
    } else {
        1.0
    };
    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
    let quota = Quota::with_period(period)
        .expect("period is positive")
        .allow_burst(NonZeroU32::MIN);
    RateLimiter::direct(quota)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn spaces_calls_at_the_rate() {
        let b = super::bucket(100.0);
        let start = std::time::Instant::now();
        for _ in 0..21 {
            b.until_ready().await;
        }
        // 21 calls at 100/s need at least 200 ms: no burst.
        assert!(start.elapsed() >= std::time::Duration::from_millis(195));
    }
}
