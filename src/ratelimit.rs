//! Token buckets per target and provider API.
//!
//! A strict provider counts calls in any one-second window, so buckets
//! allow no burst: calls are spaced `1 / rate` apart. A bucket has two
//! stages. `pace` (governor's GCRA) meters how fast lanes mark jobs in
//! flight. `until_ready` is a strict spacer passed right before the request
//! leaves: the durable mark between the two takes a variable time (group
//! commit releases several lanes at once), and without the second stage
//! those sends would bunch into one window. A rate change only alters the
//! spacer's period, so no spacing state is lost. Several replicas
//! share one app's limit: each takes
//! `(limit × HEADROOM × factor − (live − 1)) / live`, where `live` is the
//! number of live workers and `factor` the shared AIMD factor (halved on a
//! rate-limit answer, recovering over seconds). The `− (live − 1)` term
//! covers the one extra call each replica's bucket can place in a window,
//! so the sum never exceeds the limit in any window.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Strict spacing: every caller gets the next slot, `period` after the
/// previous one.
struct Spacer {
    period_ns: AtomicU64,
    next: Mutex<tokio::time::Instant>,
}

impl Spacer {
    fn new(rate: f64) -> Spacer {
        Spacer {
            period_ns: AtomicU64::new(period_ns(rate)),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for a slot. A wake-up later than max(3 ms, one period)
    /// means the process stalled: the slot is given up and a new one taken
    /// (up to three times), so a stall turns into a delay rather than a
    /// burst of late calls.
    async fn wait(&self) {
        // Under a sustained overload every wake-up is late: go after a few.
        for _ in 0..3 {
            let period = Duration::from_nanos(self.period_ns.load(Ordering::Acquire));
            let slot = {
                let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
                let slot = (*next).max(tokio::time::Instant::now());
                *next = slot + period;
                slot
            };
            tokio::time::sleep_until(slot).await;
            if tokio::time::Instant::now() - slot <= period.max(Duration::from_millis(3)) {
                return;
            }
        }
    }
}

fn period_ns(rate: f64) -> u64 {
    (1e9 / rate.max(1e-3)) as u64
}

/// A bucket whose rate can change at run time (replica share, AIMD, SIGHUP).
pub struct Bucket {
    state: Mutex<State>,
    inner: RwLock<Arc<DefaultDirectRateLimiter>>,
    gate: Spacer,
    /// Live calls waiting in `pace_as` (the cut-over goes first).
    live_waiting: std::sync::atomic::AtomicUsize,
    /// Signalled when the last waiting live call got its slot.
    live_clear: tokio::sync::Notify,
}

/// Counts a waiting live call; the drop (slot taken, or the wait
/// cancelled) lets the backfill go again once no live call waits.
struct LiveWaiter<'a>(&'a Bucket);

impl Drop for LiveWaiter<'_> {
    fn drop(&mut self) {
        if self.0.live_waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.live_clear.notify_waiters();
        }
    }
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
            gate: Spacer::new(effective),
            live_waiting: std::sync::atomic::AtomicUsize::new(0),
            live_clear: tokio::sync::Notify::new(),
        }
    }

    /// [`Bucket::pace`], live traffic first (issue 16): while a live call
    /// waits, backfill calls hold back, so live messages take the share of
    /// the rate they need and the backfill the rest. The backfill keeps
    /// whatever live traffic leaves, so it never stops for long.
    pub async fn pace_as(&self, live: bool) {
        if live {
            self.live_waiting.fetch_add(1, Ordering::AcqRel);
            let _waiter = LiveWaiter(self);
            self.pace().await;
            return;
        }
        use governor::clock::Clock;
        loop {
            let clear = self.live_clear.notified();
            tokio::pin!(clear);
            clear.as_mut().enable();
            if self.live_waiting.load(Ordering::Acquire) > 0 {
                clear.await;
                continue;
            }
            // Not governor's `until_ready`: a backfill call must look for
            // live waiters again at every slot, not only once.
            let l = self.inner.read().unwrap_or_else(|p| p.into_inner()).clone();
            match l.check() {
                Ok(()) => return,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Meters work that comes before the call (marking it in flight).
    pub async fn pace(&self) {
        let l = self.inner.read().unwrap_or_else(|p| p.into_inner()).clone();
        l.until_ready().await;
    }

    /// Waits for this call's slot; pass it right before the request leaves.
    pub async fn until_ready(&self) {
        self.gate.wait().await;
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
            self.gate.period_ns.store(period_ns(next), Ordering::Release);
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

    #[tokio::test(start_paused = true)]
    async fn the_gate_spaces_callers_strictly() {
        let b = Arc::new(Bucket::new(100.0)); // 98/s: about 10.2 ms apart
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                b.until_ready().await;
                tokio::time::Instant::now()
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        times.sort();
        // Slots are exact; wake-ups land on the timer's millisecond ticks,
        // so one gap may be up to 1 ms short, never the long-run spacing.
        for w in times.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_micros(9_200), "{:?}", w[1] - w[0]);
        }
        assert!(times[49] - times[0] >= Duration::from_micros(49 * 10_204 - 1_000));
        assert!(times[0] - start < Duration::from_millis(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_calls_pass_waiting_backfill_calls() {
        let b = Arc::new(Bucket::new(50.0)); // about 20 ms apart
        let mut backfill = Vec::new();
        for _ in 0..20 {
            let b = b.clone();
            // Backfill lanes: pace, call, pace again, for ever.
            backfill.push(tokio::spawn(async move {
                loop {
                    b.pace_as(false).await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A live lane sends 20 calls while the backfill keeps the bucket busy.
        let start = std::time::Instant::now();
        for _ in 0..20 {
            b.pace_as(true).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = start.elapsed();
        // One slot each (20 × 20 ms). Without the priority the live lane
        // competes with every backfill lane for each slot: measured about
        // two slots each (760 ms), as governor lets the newest waiter win
        // more often than its share.
        assert!(took <= Duration::from_millis(600), "{took:?}");
        for t in backfill {
            t.abort();
        }
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
