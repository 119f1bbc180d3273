//! Rate control across replicas: this process's share of each target's
//! rate, the shared factor a rate-limit answer nudges down, the hold on
//! sends while a joining worker waits for the others to make room, and the
//! number of lanes the rate needs. `crate::ratelimit` is the bucket itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::clock::Clock;
use super::heartbeat::Leases;
use super::target::{Halts, Targets};
use crate::config::WorkerConfig;
use crate::store::Store;

/// How fast a throttled target's shared factor recovers, per second: a
/// nudge comes back within about five seconds. If the learnt headroom is
/// short for good, the rate settles where answers are rare (about one in
/// five seconds), not at half.
pub const RECOVER_PER_SEC: f64 = 0.002;
/// What a rate-limit answer multiplies the shared factor by: 1 %, small
/// enough that a replica's whole-calls share (see `ratelimit`) mostly
/// stays where it was.
pub const NUDGE: f64 = 0.99;
/// How often the rate split and backlog metrics are refreshed.
const RATE_EVERY: Duration = Duration::from_secs(2);
/// `send_from` while this worker holds no lanes.
const IDLE: i64 = i64::MAX;

/// This process's view of the shared rates.
pub(crate) struct Rates {
    store: Store,
    id: Uuid,
    targets: Arc<Targets>,
    clock: Clock,
    /// Active workers sharing the targets' rates (this one included).
    live: AtomicU32,
    /// Moving average of one job's cycle (pace, mark, call, checkpoint), µs.
    cycle_us: AtomicU64,
    /// Clock ms from which this worker's lanes may send; `IDLE` while it
    /// holds no lanes (see [`Rates::activate`]).
    send_from: AtomicI64,
}

impl Rates {
    /// Rate control for `targets`, on behalf of worker `id`.
    pub(crate) fn new(store: Store, id: Uuid, targets: Arc<Targets>, clock: Clock) -> Rates {
        Rates {
            store,
            id,
            targets,
            clock,
            live: AtomicU32::new(1),
            cycle_us: AtomicU64::new(0),
            send_from: AtomicI64::new(IDLE),
        }
    }

    /// Called on a rate-limit answer: nudges the target down for every
    /// replica, here at once and elsewhere at their next refresh.
    pub(crate) async fn throttled(&self, target: &str) {
        match self.store.throttle(target, RECOVER_PER_SEC, NUDGE).await {
            Ok(factor) => {
                if let Some(t) = self.targets.get(target) {
                    t.set_share(self.live.load(Ordering::Acquire), factor);
                    tracing::info!(
                        target_name = target,
                        factor,
                        rate = t.bucket.effective(),
                        "rate-limit answer: slowing down"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot record a rate-limit answer"),
        }
    }

    /// Sets every target's share for `live` workers and the shared factors.
    fn apply(&self, live: u32, factors: HashMap<String, f64>) {
        for (name, t) in self.targets.iter() {
            t.set_share(live, factors.get(name).copied().unwrap_or(1.0));
        }
    }

    /// Recomputes the rate split: active workers and the shared factors.
    /// `active`: this worker holds lanes.
    pub(crate) async fn refresh(&self, active: bool) {
        if !active {
            self.send_from.store(IDLE, Ordering::Release);
        }
        let others = self.store.worker_heartbeat(self.id, active, RATE_EVERY * 3).await;
        let factors = self.store.rate_factors(RECOVER_PER_SEC).await;
        if let (Ok(others), Ok(factors)) = (others, factors) {
            let live = others + 1;
            let prev = self.live.swap(live, Ordering::AcqRel);
            if prev != live {
                tracing::info!(active_workers = live, "rate split changed");
            }
            self.apply(live, factors);
            for (name, t) in self.targets.iter() {
                metrics::gauge!(crate::ops::metrics::RATE_SHARE, "target" => name.clone())
                    .set(t.bucket.effective());
            }
        }
    }

    /// Called when an idle worker claims lanes: flags it active for the
    /// others and, if any other worker is active, holds its sends until
    /// they have all refreshed their split (so the sum never overshoots).
    pub(crate) async fn activate(&self) {
        if self.send_from.load(Ordering::Acquire) != IDLE {
            return;
        }
        let refresh_ms = RATE_EVERY.as_millis() as i64 + 1000;
        match self.store.worker_heartbeat(self.id, true, RATE_EVERY * 3).await {
            Ok(others) => {
                let live = others + 1;
                self.live.store(live, Ordering::Release);
                let factors = self.store.rate_factors(RECOVER_PER_SEC).await;
                self.apply(live, factors.unwrap_or_default());
                let wait = if others == 0 { 0 } else { refresh_ms };
                self.send_from
                    .store(self.clock.now_ms() + wait, Ordering::Release);
            }
            // Cannot tell: behave as if others were active.
            Err(_) => self
                .send_from
                .store(self.clock.now_ms() + refresh_ms, Ordering::Release),
        }
    }

    /// Records one job's cycle time (moving average over ~64 jobs).
    pub(crate) fn record_cycle(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u32::MAX)) as u64;
        let _ = self
            .cycle_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(if old == 0 { us } else { old - old / 64 + us / 64 })
            });
    }

    /// How many lanes to run: enough that the rate, not the lane count,
    /// limits throughput (rate × cycle time, with half again to spare),
    /// never below `concurrency` nor above `max_concurrency`.
    pub(crate) fn lane_cap(&self, cfg: &WorkerConfig, halts: &Halts) -> usize {
        let cycle = self.cycle_us.load(Ordering::Acquire) as f64 / 1e6;
        let rate: f64 = self
            .targets
            .iter()
            .filter(|(name, _)| !halts.is_halted(name))
            .map(|(_, t)| t.bucket.effective())
            .sum();
        let needed = (rate * cycle * 1.5).ceil() as usize;
        needed.clamp(cfg.concurrency, cfg.max_concurrency.max(cfg.concurrency))
    }

    /// Whether this worker may send right now (see [`Rates::activate`]).
    pub(crate) fn may_send_now(&self) -> bool {
        self.send_from.load(Ordering::Acquire) <= self.clock.now_ms()
    }

    /// Waits until this worker may send (see [`Rates::activate`]).
    pub(crate) async fn may_send(&self) {
        loop {
            let from = self.send_from.load(Ordering::Acquire);
            let now = self.clock.now_ms();
            if from <= now {
                return;
            }
            let wait = if from == IDLE { 50 } else { (from - now).min(1000) };
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
    }

    /// Active workers, and this process's share of each target's rate.
    pub(crate) fn shares(&self) -> (u32, Vec<(String, f64)>) {
        let shares = self
            .targets
            .iter()
            .map(|(n, t)| (n.clone(), t.bucket.effective()))
            .collect();
        (self.live.load(Ordering::Acquire), shares)
    }

    /// Keeps the rate split current every couple of seconds; also
    /// refreshes the backlog gauge.
    pub(crate) async fn run(self: Arc<Self>, leases: Arc<Leases>, stop: CancellationToken) {
        let mut tick = 0u64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RATE_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            self.refresh(!leases.is_empty()).await;
            if tick % 15 == 0 {
                if let Ok(counts) = self.store.backlog().await {
                    for (status, n) in counts {
                        metrics::gauge!(crate::ops::metrics::BACKLOG, "status" => status).set(n as f64);
                    }
                }
            }
            tick += 1;
        }
    }
}
