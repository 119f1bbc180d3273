//! The worker's time: a monotonic clock, each lane's lease deadline on it,
//! and what fits before that deadline.
//!
//! A lane keeps a local deadline besides the database's lease: it starts
//! nothing that could end after it, so a worker cut off from the database
//! stops sending before another may take the lane over. The clock is
//! tokio's: the system's monotonic clock in a running daemon, and the
//! paused clock a test drives by hand under `#[tokio::test(start_paused =
//! true)]`, so this arithmetic is tested without a database or a wait.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::WorkerConfig;

/// Monotonic milliseconds since the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

impl Clock {
    /// A clock that starts now: the system's, or tokio's paused one in a test.
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Milliseconds since the clock was made.
    pub fn now_ms(&self) -> i64 {
        self.origin.elapsed().as_millis() as i64
    }
}

/// What a deadline holds once its lane is done with the lease and
/// releasing it: the heartbeat leaves such a lane alone.
const FINISHING: i64 = i64::MIN;

/// A lane's lease deadline in ms on the worker's clock: set at the claim,
/// moved on by the heartbeat, read by the lane before every call.
#[derive(Debug)]
pub struct Deadline {
    clock: Clock,
    until: AtomicI64,
}

impl Deadline {
    /// A lease of `lease` taken at `started_ms` (a time read before the
    /// claim: the database's lease may have started any time after it).
    pub fn new(clock: Clock, started_ms: i64, lease: Duration) -> Deadline {
        Deadline {
            clock,
            until: AtomicI64::new(started_ms + lease.as_millis() as i64),
        }
    }

    /// Milliseconds left; negative once past.
    pub fn left_ms(&self) -> i64 {
        self.until
            .load(Ordering::Acquire)
            .saturating_sub(self.clock.now_ms())
    }

    /// Whether a wait of `d` from now still ends before the deadline.
    pub fn outlasts(&self, d: Duration) -> bool {
        self.left_ms() > d.as_millis() as i64
    }

    /// Moves the deadline to `started_ms + lease` after a renewal begun at
    /// `started_ms`, unless the lane is finishing.
    pub fn renew(&self, started_ms: i64, lease: Duration) {
        let until = started_ms + lease.as_millis() as i64;
        let _ = self.until.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v != FINISHING).then_some(until)
        });
    }

    /// Marks the lane finishing (see [`Deadline::is_finishing`]) and hands
    /// back a private copy of the deadline for the release.
    pub fn finish(&self) -> Deadline {
        Deadline {
            clock: self.clock,
            until: AtomicI64::new(self.until.swap(FINISHING, Ordering::AcqRel)),
        }
    }

    /// Whether the lane is releasing its lease (the heartbeat need not
    /// renew it, nor warn when it is gone).
    pub fn is_finishing(&self) -> bool {
        self.until.load(Ordering::Acquire) == FINISHING
    }
}

/// What a call needs of the lease: its timeout, and a tenth of the lease
/// (at least 200 ms) to spare so no other worker can hold the lane meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct CallFit {
    timeout_ms: i64,
    margin_ms: i64,
}

impl CallFit {
    /// The fit for the configured request timeout and lease.
    pub fn new(cfg: &WorkerConfig) -> CallFit {
        CallFit {
            timeout_ms: cfg.request_timeout_ms as i64,
            margin_ms: (cfg.lease_secs as i64 * 100).max(200),
        }
    }

    /// Whether the lease leaves room for a call that starts now: it must
    /// end, timeout included, with the margin to spare.
    pub fn room_for_a_call(&self, d: &Deadline) -> bool {
        d.left_ms() >= self.timeout_ms + self.margin_ms
    }

    /// Whether a marked call may still leave after waiting for its slot:
    /// it must end, timeout included, inside the lease.
    pub fn may_start(&self, d: &Deadline) -> bool {
        d.left_ms() >= self.timeout_ms
    }

    /// How long from now a further call for the same job (a fresh
    /// signature or UserSig) may still start and end inside the lease.
    pub fn start_within(&self, d: &Deadline) -> Duration {
        Duration::from_millis((d.left_ms() - self.timeout_ms).max(0) as u64)
    }

    /// The fence the in-flight mark checks on the database's clock.
    pub fn fence(&self) -> Duration {
        Duration::from_millis((self.timeout_ms + self.margin_ms) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const LEASE: Duration = Duration::from_secs(30);

    /// 5 s timeout, 30 s lease: a 3 s margin, so a call needs 8 s.
    fn fit() -> CallFit {
        CallFit {
            timeout_ms: 5_000,
            margin_ms: 3_000,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_would_not_fit_the_lease_is_not_started() {
        let clock = Clock::new();
        let d = Deadline::new(clock, clock.now_ms(), LEASE);
        assert!(fit().room_for_a_call(&d));
        advance(Duration::from_secs(22)).await;
        assert!(fit().room_for_a_call(&d), "8 s left: just room");
        advance(Duration::from_millis(1)).await;
        assert!(!fit().room_for_a_call(&d));
        // A call already marked may still leave while it ends in the lease.
        assert!(fit().may_start(&d));
        advance(Duration::from_millis(3_000)).await;
        assert!(!fit().may_start(&d));
        assert_eq!(fit().fence(), Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_call_starts_only_while_it_fits() {
        let clock = Clock::new();
        let d = Deadline::new(clock, clock.now_ms(), LEASE);
        assert_eq!(fit().start_within(&d), Duration::from_secs(25));
        advance(Duration::from_secs(20)).await;
        assert_eq!(fit().start_within(&d), Duration::from_secs(5));
        advance(Duration::from_secs(6)).await;
        assert_eq!(fit().start_within(&d), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_move_the_deadline_until_the_lane_finishes() {
        let clock = Clock::new();
        // The deadline counts from before the claim.
        let d = Deadline::new(clock, clock.now_ms() - 1_000, LEASE);
        assert_eq!(d.left_ms(), 29_000);
        advance(Duration::from_secs(10)).await;
        d.renew(clock.now_ms(), LEASE);
        assert_eq!(d.left_ms(), 30_000);
        assert!(d.outlasts(Duration::from_millis(29_999)));
        assert!(!d.outlasts(LEASE));
        let kept = d.finish();
        assert!(d.is_finishing() && !kept.is_finishing());
        assert_eq!(kept.left_ms(), 30_000);
        d.renew(clock.now_ms(), LEASE);
        assert!(d.is_finishing(), "a finishing lane is not renewed");
        assert!(d.left_ms() < 0);
    }
}
