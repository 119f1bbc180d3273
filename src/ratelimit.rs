//! Token buckets per target and provider API.
//!
//! A strict provider counts calls in any one-second window, so buckets
//! allow no burst: calls are spaced `1 / rate` apart. Several replicas
//! share one app's limit: each takes
//! `(limit × HEADROOM × factor − (live − 1)) / live`, where `live` is the
//! number of live workers and `factor` the shared AIMD factor (halved on a
//! rate-limit answer, recovering over seconds). The `− (live − 1)` term
//! covers the one extra call each replica's bucket can place in a window,
//! so the sum never exceeds the limit in any window.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Share of the documented limit we aim for: arrival jitter on the way to
/// the provider must not push a window over.
pub const HEADROOM: f64 = 0.98;
/// Lowest rate a bucket is ever set to.
const FLOOR: f64 = 0.2;

/// A GCRA limiter at `rate_per_sec`, one call at a time.
pub fn limiter(rate_per_sec: f64) -> DefaultDirectRateLimiter {
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

struct State {
    base: f64,
    live: u32,
    factor: f64,
    effective: f64,
}

/// A bucket whose rate can change at run time (replica share, AIMD, SIGHUP).
pub struct Bucket {
    state: Mutex<State>,
    inner: RwLock<Arc<DefaultDirectRateLimiter>>,
}

impl Bucket {
    /// A bucket for one process alone at the documented limit.
    pub fn new(limit_per_sec: f64) -> Bucket {
        let effective = share(limit_per_sec, 1, 1.0);
        Bucket {
            state: Mutex::new(State {
                base: limit_per_sec,
                live: 1,
                factor: 1.0,
                effective,
            }),
            inner: RwLock::new(Arc::new(limiter(effective))),
        }
    }

    /// Waits for a token.
    pub async fn until_ready(&self) {
        let l = self.inner.read().unwrap_or_else(|p| p.into_inner()).clone();
        l.until_ready().await;
    }

    /// The rate this process uses now.
    pub fn effective(&self) -> f64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).effective
    }

    /// Changes the documented limit (configuration reload).
    pub fn set_limit(&self, limit_per_sec: f64) {
        self.update(|s| s.base = limit_per_sec);
    }

    /// Changes this process's share: `live` workers, AIMD `factor`.
    pub fn set_share(&self, live: u32, factor: f64) {
        self.update(|s| {
            s.live = live.max(1);
            s.factor = factor.clamp(0.01, 1.0);
        });
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        let next = share(s.base, s.live, s.factor);
        // Rebuilding resets the bucket's phase; skip changes under 1%.
        if (next - s.effective).abs() > s.effective * 0.01 {
            s.effective = next;
            *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(limiter(next));
        }
    }
}

/// One process's share of `limit` (see the module doc).
pub fn share(limit: f64, live: u32, factor: f64) -> f64 {
    let live = f64::from(live.max(1));
    ((limit * HEADROOM * factor - (live - 1.0)) / live).max(FLOOR)
}

/// A bucket for the simulator-free single-process case and tests.
pub fn bucket(rate_per_sec: f64) -> Bucket {
    Bucket::new(rate_per_sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spaces_calls_at_the_rate() {
        let b = limiter(100.0);
        let start = std::time::Instant::now();
        for _ in 0..21 {
            b.until_ready().await;
        }
        // 21 calls at 100/s need at least 200 ms: no burst.
        assert!(start.elapsed() >= Duration::from_millis(195));
    }

    #[test]
    fn shares_never_add_up_past_the_limit() {
        for limit in [20.0, 50.0, 200.0, 500.0] {
            for live in 1..=5u32 {
                let each = share(limit, live, 1.0);
                // Worst case per window: each replica's rate plus one.
                assert!(
                    each * f64::from(live) + f64::from(live - 1) <= limit,
                    "{limit} {live}"
                );
            }
        }
        assert!((share(500.0, 1, 1.0) - 490.0).abs() < 1e-9);
        assert!(share(20.0, 3, 0.5) >= FLOOR);
    }

    #[test]
    fn bucket_follows_its_share() {
        let b = Bucket::new(100.0);
        assert!((b.effective() - 98.0).abs() < 1e-9);
        b.set_share(2, 1.0);
        assert!((b.effective() - 48.5).abs() < 1e-9);
        b.set_share(2, 0.5);
        assert!((b.effective() - 24.0).abs() < 1e-9);
        b.set_limit(200.0);
        assert!((b.effective() - 48.5).abs() < 1e-9);
    }
}
