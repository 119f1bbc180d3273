//! Token buckets per target and provider API.
//!
//! A strict provider counts calls in any one-second window, so buckets
//! allow no burst: calls are spaced `1 / rate` apart. A bucket has two
//! stages. `pace` (governor's GCRA) meters how fast lanes mark jobs in
//! flight. `until_ready` is a strict spacer passed right before the request
//! leaves: the durable mark between the two takes a variable time (group
//! commit releases several lanes at once), and without the second stage
//! those sends would bunch into one window. A rate change only alters the
//! spacer's period, so no spacing state is lost.
//!
//! The limit is known, so the only reason to stay under it is jitter: the
//! time from our send to the provider's count varies, and with calls
//! spaced exactly at the limit some one-second span would catch one call
//! too many. The headroom is learnt from the spread of the provider's
//! answer times (`observe`): a send's way in is part of its answer time,
//! so the answer times' standard deviation `σ` bounds how far two arrivals
//! can move against each other (`σ` if the way in and the way back vary
//! alike and independently), and we keep `Z × σ` of every second free.
//! A rate-limit answer shows the headroom was short this time: the shared
//! factor is nudged down a little (see `Store::throttle`), never halved.
//!
//! Several replicas share one app's limit. Alone, a process takes
//! `limit × headroom × factor`. With `live` replicas each takes
//! `x = limit × headroom × factor / live` rounded down to a whole number
//! of calls a second, less a timer slack: a spacer at a rate `r` puts at
//! most `floor(r) + 1` calls in any one-second span, so `live` of them put
//! at most `live × floor(x)` ≤ `limit × headroom` there whatever their
//! phases.

use parking_lot::{Mutex, RwLock};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Share of the documented limit used before any answer time is known.
pub const HEADROOM: f64 = 0.98;
/// Standard deviations of answer-time spread kept free in every second.
const Z: f64 = 2.0;
/// Fixed part of the headroom, s: timer and scheduling lateness.
const TIMER_SLACK: f64 = 0.002;
/// The learnt headroom never goes below this share of the limit.
const MIN_HEADROOM: f64 = 0.8;
/// Answers observed before the learnt headroom replaces `HEADROOM`, and
/// between two updates of it.
const OBSERVE_EVERY: u64 = 32;
/// Weight of one answer in the moving mean and variance.
const EWMA: f64 = 1.0 / 256.0;
/// With several replicas, `floor(x) + 1` calls of one replica span this
/// much more than a second, so a spacer's late wake-up cannot squeeze
/// them into one.
const PHASE_SLACK: f64 = 0.005;
/// Lowest rate a bucket is ever set to.
const FLOOR: f64 = 0.2;

/// Headroom for answer times whose standard deviation is `sd_secs`.
pub fn headroom_for(sd_secs: f64) -> f64 {
    let sd = if sd_secs.is_finite() {
        sd_secs.max(0.0)
    } else {
        0.0
    };
    (1.0 / (1.0 + TIMER_SLACK + Z * sd)).max(MIN_HEADROOM)
}

/// Moving mean and variance of answer times, s.
#[derive(Default)]
struct Spread {
    n: u64,
    mean: f64,
    var: f64,
}

impl Spread {
    /// Adds one answer time; returns the new standard deviation every
    /// `OBSERVE_EVERY` answers.
    fn add(&mut self, secs: f64) -> Option<f64> {
        self.n += 1;
        if self.n == 1 {
            self.mean = secs;
            return None;
        }
        // Plain averages at first, then an exponential moving one.
        let w = (1.0 / self.n as f64).max(EWMA);
        let d = secs - self.mean;
        self.mean += w * d;
        self.var = (1.0 - w) * (self.var + w * d * d);
        (self.n % OBSERVE_EVERY == 0).then(|| self.var.sqrt())
    }
}

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
    headroom: f64,
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
                let mut next = self.next.lock();
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
    spread: Mutex<Spread>,
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
        let effective = share(limit_per_sec, 1, 1.0, HEADROOM);
        Bucket {
            state: Mutex::new(State {
                base: limit_per_sec,
                live: 1,
                factor: 1.0,
                headroom: HEADROOM,
                effective,
            }),
            inner: RwLock::new(Arc::new(limiter(effective))),
            gate: Spacer::new(effective),
            spread: Mutex::new(Spread::default()),
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
            let l = self.inner.read().clone();
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
        let l = self.inner.read().clone();
        l.until_ready().await;
    }

    /// Takes a pace slot if one is free right now, without waiting.
    pub fn try_pace(&self) -> bool {
        let l = self.inner.read().clone();
        l.check().is_ok()
    }

    /// Waits for this call's slot; pass it right before the request leaves.
    pub async fn until_ready(&self) {
        self.gate.wait().await;
    }

    /// Takes one answer time of a call this bucket paced; the spread of
    /// these sets the headroom (see the module doc).
    pub fn observe(&self, took: Duration) {
        let sd = self.spread.lock().add(took.as_secs_f64());
        if let Some(sd) = sd {
            self.update(|s| s.headroom = headroom_for(sd));
        }
    }

    /// The share of the limit kept for jitter now.
    pub fn headroom(&self) -> f64 {
        self.state.lock().headroom
    }

    /// The rate this process uses now.
    pub fn effective(&self) -> f64 {
        self.state.lock().effective
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
        let mut s = self.state.lock();
        f(&mut s);
        let next = share(s.base, s.live, s.factor, s.headroom);
        // Rebuilding resets the bucket's phase; skip changes under 1%.
        if (next - s.effective).abs() > s.effective * 0.01 {
            s.effective = next;
            self.gate.period_ns.store(period_ns(next), Ordering::Release);
            *self.inner.write() = Arc::new(limiter(next));
        }
    }
}

/// One process's share of `limit` (see the module doc).
pub fn share(limit: f64, live: u32, factor: f64, headroom: f64) -> f64 {
    let x = limit * headroom * factor / f64::from(live.max(1));
    let each = if live <= 1 {
        x
    } else {
        x.floor() / (1.0 + PHASE_SLACK)
    };
    each.max(FLOOR)
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
            for live in 2..=5u32 {
                let each = share(limit, live, 1.0, HEADROOM);
                // Worst case per window: floor(rate) + 1 calls a replica,
                // even when wake-ups run up to 4 ms a second late.
                let calls = (each * 1.004).floor() + 1.0;
                let worst = f64::from(live) * calls;
                assert!(worst <= limit * HEADROOM, "{limit} {live}: {worst}");
            }
        }
        assert!((share(500.0, 1, 1.0, HEADROOM) - 490.0).abs() < 1e-9);
        assert!(share(20.0, 3, 0.5, HEADROOM) >= FLOOR);
        // 50/s over 3 replicas: 16 calls each in a worst-case second.
        assert!(share(50.0, 3, 1.0, HEADROOM) * 3.0 > 0.95 * 50.0);
    }

    #[test]
    fn headroom_follows_the_answer_time_spread() {
        assert!((headroom_for(0.0) - 1.0 / 1.002).abs() < 1e-9);
        // 12.5 ms of spread: 2.5 % of each second kept free.
        let h = headroom_for(0.0125);
        assert!(h > 0.97 && h < 0.975, "{h}");
        assert_eq!(headroom_for(10.0), MIN_HEADROOM);
        let b = Bucket::new(100.0);
        assert_eq!(b.headroom(), HEADROOM);
        // Answers alternating 40 and 60 ms: a spread of 10 ms.
        for i in 0..2000 {
            b.observe(Duration::from_millis(if i % 2 == 0 { 40 } else { 60 }));
        }
        let want = headroom_for(0.010);
        assert!((b.headroom() - want).abs() < 0.002, "{} {want}", b.headroom());
        assert!((b.effective() - 100.0 * b.headroom()).abs() < 1.0);
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
        assert!((b.effective() - 49.0 / (1.0 + PHASE_SLACK)).abs() < 1e-9);
        b.set_share(2, 0.5);
        assert!((b.effective() - 24.0 / (1.0 + PHASE_SLACK)).abs() < 1e-9);
        b.set_limit(200.0);
        assert!((b.effective() - 49.0 / (1.0 + PHASE_SLACK)).abs() < 1e-9);
    }
}
