//! The providers' rate limit as the simulator enforces it: a call is refused
//! when accepting it would put more than N calls into some one-second
//! window. That is checked exactly with a ring of the last N accepted
//! arrival times: the call is refused iff the N-th latest accepted call is
//! less than a second old. Refused calls are not recorded, so a client over
//! the rate still gets N calls through per second.
//!
//! A fractional rate `r` becomes `N = max(1, floor(r))` calls per `N / r`
//! seconds (2.5/s: 2 calls in any 0.8 s).

use parking_lot::Mutex;
use std::collections::VecDeque;

/// A sliding-window limiter for one app and API.
#[derive(Debug)]
pub struct RateWindow {
    /// Calls allowed per window; 0 means unlimited.
    cap: usize,
    window_ns: i64,
    rate: f64,
    ring: Mutex<VecDeque<i64>>,
}

impl RateWindow {
    /// A limiter for `rate` calls per second; 0, negative or non-finite
    /// means unlimited.
    pub fn new(rate: f64) -> Self {
        if !(rate.is_finite() && rate > 0.0) {
            return Self {
                cap: 0,
                window_ns: 0,
                rate: 0.0,
                ring: Mutex::new(VecDeque::new()),
            };
        }
        let cap = (rate.floor() as usize).max(1);
        let window_ns = ((cap as f64 / rate) * 1e9).round() as i64;
        Self {
            cap,
            window_ns: window_ns.max(1),
            rate,
            ring: Mutex::new(VecDeque::with_capacity(cap.min(4096))),
        }
    }

    /// The configured calls per second (0: unlimited).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Records a call at `now_ns` and returns true, or returns false (and
    /// records nothing) when it would exceed the limit.
    pub fn try_acquire(&self, now_ns: i64) -> bool {
        if self.cap == 0 {
            return true;
        }
        let mut ring = self.ring.lock();
        while let Some(&front) = ring.front() {
            if now_ns.saturating_sub(front) >= self.window_ns {
                ring.pop_front();
            } else {
                break;
            }
        }
        if ring.len() >= self.cap {
            return false;
        }
        ring.push_back(now_ns);
        true
    }

    /// Forgets every recorded call.
    pub fn reset(&self) {
        self.ring.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn refuses_exactly_the_excess_within_one_second() {
        let w = RateWindow::new(5.0);
        let results: Vec<bool> = (0..8).map(|i| w.try_acquire(i * 1_000)).collect();
        assert_eq!(results, [true, true, true, true, true, false, false, false]);
    }

    #[test]
    fn window_slides_per_call() {
        let w = RateWindow::new(2.0);
        assert!(w.try_acquire(0));
        assert!(w.try_acquire(S / 2));
        assert!(!w.try_acquire(S - 1));
        // The first call leaves the window at exactly one second.
        assert!(w.try_acquire(S));
        assert!(!w.try_acquire(S + S / 2 - 1));
        assert!(w.try_acquire(S + S / 2));
    }

    #[test]
    fn refused_calls_do_not_count() {
        let w = RateWindow::new(1.0);
        assert!(w.try_acquire(0));
        for t in 1..10 {
            assert!(!w.try_acquire(t * S / 10));
        }
        assert!(w.try_acquire(S));
    }

    #[test]
    fn zero_is_unlimited_and_fractions_scale_the_window() {
        let w = RateWindow::new(0.0);
        assert!((0..10_000).all(|i| w.try_acquire(i)));
        let w = RateWindow::new(2.5);
        assert!(w.try_acquire(0));
        assert!(w.try_acquire(1));
        assert!(!w.try_acquire(S * 8 / 10 - 1));
        assert!(w.try_acquire(S * 8 / 10));
    }
}
