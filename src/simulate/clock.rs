//! The simulator's sense of time.
//!
//! Signatures, UserSig expiry, ZIM's send-time window, rate windows and
//! outage windows all read the clock, so tests pin it ([`Clock::manual`])
//! instead of sleeping. The system clock is the default.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wall and monotonic time, either the system's or a manual one.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that stands at `unix_ms` until moved with [`Clock::set_ms`] or
    /// [`Clock::advance_ms`]; clones share it.
    pub fn manual(unix_ms: i64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(unix_ms))),
        }
    }

    /// Whether this is a manual clock.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// Moves a manual clock to `unix_ms`; the system clock ignores it.
    pub fn set_ms(&self, unix_ms: i64) {
        if let Some(m) = &self.manual {
            m.store(unix_ms, Ordering::SeqCst);
        }
    }

    /// Moves a manual clock forward by `ms`; the system clock ignores it.
    pub fn advance_ms(&self, ms: i64) {
        if let Some(m) = &self.manual {
            m.fetch_add(ms, Ordering::SeqCst);
        }
    }

    /// Unix time in milliseconds.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(m) => m.load(Ordering::SeqCst),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        }
    }

    /// Unix time in seconds.
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Monotonic nanoseconds (a manual clock's wall time, in ns).
    pub fn mono_ns(&self) -> i64 {
        match &self.manual {
            Some(m) => m.load(Ordering::SeqCst).saturating_mul(1_000_000),
            None => process_start().elapsed().as_nanos() as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(1_000);
        let shared = c.clone();
        assert_eq!(c.now_ms(), 1_000);
        shared.advance_ms(500);
        assert_eq!(c.now_ms(), 1_500);
        assert_eq!(c.mono_ns(), 1_500_000_000);
        c.set_ms(10_999);
        assert_eq!(shared.now_secs(), 10);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = Clock::system();
        let a = c.mono_ns();
        let b = c.mono_ns();
        assert!(b >= a);
        assert!(c.now_ms() > 1_600_000_000_000);
    }
}
