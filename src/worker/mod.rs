//! `chatferry run`: claims lanes, runs each strictly in order, and
//! checkpoints every provider answer.
//!
//! One task per claimed lane; at most `worker.concurrency` at once. A
//! heartbeat task renews every lease this process holds and stops a lane
//! whose lease was lost. Each lane also keeps a local deadline: it sends
//! nothing unless its lease outlives the request timeout, so a worker cut
//! off from the database stops sending before another may take over.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, WorkerConfig};
use crate::providers::Provider;
use crate::ratelimit;
use crate::store::{self, Store};

mod lane;

/// A point in a lane's life where a test may hold the lane, to drive a
/// race with an operator command deterministically (see [`Worker::set_hook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// The lane stopped and is about to give its lease back, parked this way.
    BeforeRelease { lane: i64, park: store::Park },
    /// The lane is about to mark this job in flight (its lease checked locally).
    BeforeMark { lane: i64, job: i64 },
    /// The provider accepted this job; its done checkpoint is next.
    BeforeCheckpoint { lane: i64, job: i64 },
    /// The heartbeat is about to renew this process's leases.
    BeforeRenew,
}

/// What a test runs at a [`HookPoint`]; the lane waits for it.
pub type Hook = Arc<dyn Fn(HookPoint) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Monotonic milliseconds since the process started.
fn now_ms() -> i64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as i64
}

/// A lane's lease deadline once the lane is done with it and releasing.
pub(crate) const FINISHING: i64 = i64::MIN;

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

/// One provider target as the worker sees it.
pub struct Target {
    pub provider: Arc<dyn Provider>,
    /// The send API's bucket; the provider holds its other APIs' buckets.
    pub bucket: ratelimit::Bucket,
    /// How long an in-doubt job settles before its reconcile, ms: the
    /// configured time, raised by a probe's measured visibility delay.
    settle_ms: AtomicU64,
}

impl Target {
    fn set_share(&self, live: u32, factor: f64) {
        self.bucket.set_share(live, factor);
        for b in self.provider.buckets() {
            b.set_share(live, factor);
        }
    }
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Targets that stopped on an auth or config error, with the reason.
    pub halted: Vec<(String, String)>,
    /// With `--exit-when-idle`: lanes whose open jobs wait on an operator
    /// (paused batch, blocked lane). Empty when every job is finished.
    pub stuck: Vec<store::StuckLane>,
}

struct Held {
    token: i64,
    cancel: CancellationToken,
    valid_until: Arc<AtomicI64>,
    /// The lane's [`store::ClaimedLane::news`].
    news: Arc<AtomicBool>,
}

/// A worker process.
pub struct Worker {
    pub(crate) store: Store,
    pub(crate) cfg: WorkerConfig,
    pub(crate) targets: HashMap<String, Target>,
    pub(crate) id: Uuid,
    halted: Mutex<HashMap<String, String>>,
    held: Mutex<HashMap<i64, Held>>,
    /// Active workers sharing the targets' rates (this one included).
    live: AtomicU32,
    /// Moving average of one job's cycle (pace, mark, call, checkpoint), µs.
    cycle_us: AtomicU64,
    /// Monotonic ms from which this worker's lanes may send; `i64::MAX`
    /// while it holds no lanes (see `activate`).
    send_from: AtomicI64,
    /// Set once shutdown began (`/readyz` says not ready).
    pub draining: Arc<AtomicBool>,
    /// Group commit for in-flight marks and done checkpoints.
    pub(crate) checkpoints: store::checkpoint::Checkpoints,
    /// Set only by tests (see [`HookPoint`]).
    hook: std::sync::OnceLock<Hook>,
}

impl Worker {
    /// Builds a worker for every configured target.
    pub fn new(store: Store, config: &Config, providers: Vec<(String, Arc<dyn Provider>)>) -> Arc<Worker> {
        let targets = providers
            .into_iter()
            .map(|(name, provider)| {
                let rate = config.targets[&name].rate_per_sec();
                (
                    name,
                    Target {
                        provider,
                        bucket: ratelimit::Bucket::new(rate),
                        settle_ms: AtomicU64::new(config.worker.reconcile_settle_secs * 1000),
                    },
                )
            })
            .collect();
        Arc::new(Worker {
            checkpoints: store::checkpoint::Checkpoints::start(store.clone()),
            store,
            cfg: config.worker.clone(),
            targets,
            id: Uuid::new_v4(),
            halted: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            live: AtomicU32::new(1),
            send_from: AtomicI64::new(i64::MAX),
            cycle_us: AtomicU64::new(0),
            draining: Arc::new(AtomicBool::new(false)),
            hook: std::sync::OnceLock::new(),
        })
    }

    /// Installs a test hook (once); production code never sets one.
    pub fn set_hook(&self, hook: Hook) {
        let _ = self.hook.set(hook);
    }

    pub(crate) async fn at(&self, point: HookPoint) {
        if let Some(h) = self.hook.get() {
            h(point).await;
        }
    }

    /// Applies reloaded limits (SIGHUP): target name → documented rate.
    pub fn set_limits(&self, config: &Config) {
        for (name, t) in &self.targets {
            if let Some(tc) = config.targets.get(name) {
                t.bucket.set_limit(tc.rate_per_sec());
            }
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

    /// Recomputes the rate split: active workers and the shared AIMD factors.
    async fn refresh_rates(&self) {
        let active = !self.held.lock().is_empty();
        if !active {
            self.send_from.store(i64::MAX, Ordering::Release);
        }
        let others = self.store.worker_heartbeat(self.id, active, RATE_EVERY * 3).await;
        let factors = self.store.rate_factors(RECOVER_PER_SEC).await;
        if let (Ok(others), Ok(factors)) = (others, factors) {
            let live = others + 1;
            let prev = self.live.swap(live, Ordering::AcqRel);
            if prev != live {
                tracing::info!(active_workers = live, "rate split changed");
            }
            let factors: HashMap<String, f64> = factors.into_iter().collect();
            for (name, t) in &self.targets {
                t.set_share(live, factors.get(name).copied().unwrap_or(1.0));
                metrics::gauge!(crate::ops::metrics::RATE_SHARE, "target" => name.clone())
                    .set(t.bucket.effective());
            }
        }
    }

    /// Called when an idle worker claims lanes: flags it active for the
    /// others and, if any other worker is active, holds its sends until
    /// they have all refreshed their split (so the sum never overshoots).
    async fn activate(&self) {
        if self.send_from.load(Ordering::Acquire) != i64::MAX {
            return;
        }
        match self.store.worker_heartbeat(self.id, true, RATE_EVERY * 3).await {
            Ok(others) => {
                let live = others + 1;
                self.live.store(live, Ordering::Release);
                let factors: HashMap<String, f64> = self
                    .store
                    .rate_factors(RECOVER_PER_SEC)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                for (name, t) in &self.targets {
                    t.set_share(live, factors.get(name).copied().unwrap_or(1.0));
                }
                let wait = if others == 0 {
                    0
                } else {
                    (RATE_EVERY.as_millis() as i64) + 1000
                };
                self.send_from.store(now_ms() + wait, Ordering::Release);
            }
            // Cannot tell: behave as if others were active.
            Err(_) => self
                .send_from
                .store(now_ms() + RATE_EVERY.as_millis() as i64 + 1000, Ordering::Release),
        }
    }

    /// Tells the lanes this process runs that live work arrived for them
    /// (a notice's payload: lane ids, comma-separated).
    fn live_news(&self, payload: &str) {
        let held = self.held.lock();
        for id in payload.split(',').filter_map(|s| s.parse::<i64>().ok()) {
            if let Some(h) = held.get(&id) {
                h.news.store(true, Ordering::Release);
            }
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
    fn lane_cap(&self) -> usize {
        let cycle = self.cycle_us.load(Ordering::Acquire) as f64 / 1e6;
        let rate: f64 = self
            .targets
            .iter()
            .filter(|(name, _)| !self.is_halted(name))
            .map(|(_, t)| t.bucket.effective())
            .sum();
        let needed = (rate * cycle * 1.5).ceil() as usize;
        needed.clamp(
            self.cfg.concurrency,
            self.cfg.max_concurrency.max(self.cfg.concurrency),
        )
    }

    /// Whether this worker may send right now (see `activate`).
    pub(crate) fn may_send_now(&self) -> bool {
        self.send_from.load(Ordering::Acquire) <= now_ms()
    }

    /// Waits until this worker may send (see `activate`).
    pub(crate) async fn may_send(&self) {
        loop {
            let from = self.send_from.load(Ordering::Acquire);
            let now = now_ms();
            if from <= now {
                return;
            }
            let wait = if from == i64::MAX {
                50
            } else {
                (from - now).min(1000)
            };
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
    }

    /// Keeps the rate split current every couple of seconds; also
    /// refreshes the backlog gauge.
    async fn rate_control(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = 0u64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RATE_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            self.refresh_rates().await;
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

    /// How long an in-doubt job of `target` settles before its reconcile.
    pub(crate) fn settle(&self, target: &str) -> Duration {
        let ms = self
            .targets
            .get(target)
            .map_or(0, |t| t.settle_ms.load(Ordering::Acquire));
        Duration::from_millis(ms)
    }

    /// Hands each target what `chatferry probe` measured for it. A
    /// measured visibility delay can only lengthen the settle time.
    async fn apply_probe_findings(&self) {
        for (name, t) in &self.targets {
            let found = match self.store.probe_findings(name).await {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(target_name = name, error = %e, "cannot read probe findings; using defaults");
                    continue;
                }
            };
            let Ok(f) = serde_json::from_value::<crate::probe::Findings>(found) else {
                tracing::warn!(
                    target_name = name,
                    "stored probe findings are unreadable; run `chatferry probe` again"
                );
                continue;
            };
            t.provider.apply_findings(&f);
            if let Some(vis) = f.visibility_ms {
                let floor = self.cfg.request_timeout_ms + 3 * vis;
                t.settle_ms.fetch_max(floor, Ordering::AcqRel);
            }
            tracing::info!(target_name = name, findings = %f.summary(), "using probe findings");
        }
    }

    /// Every `worker.sweep_secs`, wakes lanes that have work and nothing
    /// to wake them. The races that stranded lanes are closed; this is the
    /// net under whatever is not yet known, and it says so loudly.
    async fn sweep(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(self.cfg.sweep_secs)) => {}
                _ = stop.cancelled() => return,
            }
            match self.store.wake_stranded_lanes().await {
                Ok(woken) => log_woken(&woken),
                Err(e) => tracing::warn!(error = %e, "cannot look for stranded lanes"),
            }
        }
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.cfg.lease_secs)
    }

    pub(crate) fn halt(&self, target: &str, reason: &str) {
        let mut h = self.halted.lock();
        if !h.contains_key(target) {
            tracing::error!(
                target_name = target,
                reason,
                "target halted: no more calls to it until restart"
            );
            h.insert(target.to_string(), reason.to_string());
        }
    }

    pub(crate) fn is_halted(&self, target: &str) -> bool {
        self.halted.lock().contains_key(target)
    }

    /// Targets halted so far, with why (read by the dashboard and the
    /// `chatferry_target_halted` gauge).
    pub fn halted_targets(&self) -> Vec<(String, String)> {
        let h = self.halted.lock();
        h.iter().map(|(t, r)| (t.clone(), r.clone())).collect()
    }

    /// Lanes this process holds now (`chatferry_lanes_active`).
    pub fn lanes_held(&self) -> usize {
        self.held.lock().len()
    }

    /// This process's share of each target's rate (calls/s) and the active
    /// workers it is split among (read by the dashboard).
    pub fn rate_shares(&self) -> (u32, Vec<(String, f64)>) {
        let shares = self
            .targets
            .iter()
            .map(|(n, t)| (n.clone(), t.bucket.effective()))
            .collect();
        (self.live.load(Ordering::Acquire), shares)
    }

    fn live_targets(&self) -> Vec<String> {
        let h = self.halted.lock();
        self.targets
            .keys()
            .filter(|t| !h.contains_key(*t))
            .cloned()
            .collect()
    }

    /// Runs until `shutdown` fires, or, with `exit_when_idle`, until no
    /// lane of a live target has work left.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        exit_when_idle: bool,
    ) -> anyhow::Result<RunReport> {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
        db_retry_forever(&shutdown, "register the worker", || {
            self.store.register_worker(self.id, &host)
        })
        .await;
        if let Some(woken) = db_retry_forever(&shutdown, "look for stranded lanes", || {
            self.store.wake_stranded_lanes()
        })
        .await
        {
            log_woken(&woken);
        }
        self.apply_probe_findings().await;
        tracing::info!(worker = %self.id, concurrency = self.cfg.concurrency, targets = ?self.targets.keys().collect::<Vec<_>>(), "worker started");

        // Take this process's share before the first call: a replica that
        // joins must not start at the full rate.
        self.refresh_rates().await;
        let lanes_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(self.clone().heartbeat(lanes_stop.clone()));
        let rates_stop = CancellationToken::new();
        let rates = tokio::spawn(self.clone().rate_control(rates_stop.clone()));
        let sweep = tokio::spawn(self.clone().sweep(rates_stop.clone()));
        let live_wake = Arc::new(tokio::sync::Notify::new());
        let listen = tokio::spawn(listen_live(self.clone(), live_wake.clone(), rates_stop.clone()));
        crate::ops::notify::notify("READY=1");
        let mut tasks: JoinSet<i64> = JoinSet::new();
        let mut task_lanes: HashMap<tokio::task::Id, i64> = HashMap::new();
        let poll = Duration::from_millis(self.cfg.poll_interval_ms.max(10));
        let mut db_backoff = Duration::from_millis(200);
        let mut idle_exit = false;

        loop {
            while let Some(done) = tasks.try_join_next_with_id() {
                self.finished(done, &mut task_lanes);
            }
            if shutdown.is_cancelled() {
                break;
            }
            let cap = self.lane_cap();
            // Past the cap, as many slots again for lanes holding live
            // work: backfill lanes run until empty and must not make it
            // wait, and live lanes are short (a message or two each).
            let (free, min_priority) = if tasks.len() < cap {
                (cap - tasks.len(), None)
            } else {
                let extra = self.cfg.concurrency.max(4);
                (
                    (cap + extra).saturating_sub(tasks.len()),
                    Some(store::LIVE_PRIORITY),
                )
            };
            let live = self.live_targets();
            let mut claimed = 0;
            if free > 0 && !live.is_empty() {
                let running: Vec<i64> = task_lanes.values().copied().collect();
                // The local deadline counts from before the claim: the
                // database's lease may have started any time after this.
                let claim_started = now_ms();
                match self
                    .store
                    .claim_lanes(self.id, free as i64, self.lease(), &live, &running, min_priority)
                    .await
                {
                    Ok(lanes) => {
                        db_backoff = Duration::from_millis(200);
                        claimed = lanes.len();
                        for l in lanes {
                            let cancel = lanes_stop.child_token();
                            let valid_until =
                                Arc::new(AtomicI64::new(claim_started + self.lease().as_millis() as i64));
                            self.held.lock().insert(
                                l.lease.lane_id,
                                Held {
                                    token: l.lease.token,
                                    cancel: cancel.clone(),
                                    valid_until: valid_until.clone(),
                                    news: l.news.clone(),
                                },
                            );
                            let me = self.clone();
                            let lane_id = l.lease.lane_id;
                            let handle = tasks.spawn(async move {
                                lane::run(me, l, cancel, valid_until).await;
                                lane_id
                            });
                            task_lanes.insert(handle.id(), lane_id);
                        }
                        // After the lanes are in `held`, so a concurrent
                        // refresh does not see this worker idle.
                        if claimed > 0 {
                            self.activate().await;
                        }
                    }
                    // Never exit on a claim error: after a failover or a
                    // server restart the next claim may well work.
                    Err(e) => {
                        if store::is_transient(&e) {
                            tracing::warn!(error = %e, retry_in = ?db_backoff, "database unavailable; waiting");
                        } else {
                            tracing::error!(error = %e, retry_in = ?db_backoff, "cannot claim lanes; retrying");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(db_backoff) => {}
                            _ = shutdown.cancelled() => {}
                        }
                        db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            if claimed > 0 && tasks.len() < cap {
                continue;
            }
            if claimed == 0 && tasks.is_empty() && exit_when_idle {
                let open = if live.is_empty() {
                    Ok(false)
                } else {
                    self.store.has_open_lanes(&live).await
                };
                let open = match open {
                    // Before leaving, make sure no lane with work is asleep.
                    Ok(false) => self.store.wake_stranded_lanes().await.map(|w| {
                        log_woken(&w);
                        !w.is_empty()
                    }),
                    other => other,
                };
                match open {
                    Ok(false) => {
                        idle_exit = true;
                        break;
                    }
                    Ok(true) => {}
                    Err(e) => {
                        if !store::is_transient(&e) {
                            tracing::error!(error = %e, "cannot read the backlog; retrying");
                        }
                    }
                }
            }
            // Sleep until a lane frees a slot, work may be due, or shutdown.
            let wait = if tasks.len() >= cap {
                Duration::from_secs(3600)
            } else {
                match self.store.next_claim_in_ms(&live).await {
                    Ok(Some(ms)) => Duration::from_millis(ms.clamp(5, poll.as_millis() as i64) as u64),
                    _ => poll,
                }
            };
            tokio::select! {
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    self.finished(done, &mut task_lanes);
                }
                _ = tokio::time::sleep(wait) => {}
                _ = live_wake.notified() => {}
                _ = shutdown.cancelled() => {}
            }
        }

        // Drain: lanes finish the call they are in, checkpoint it and stop.
        self.draining.store(true, Ordering::Release);
        crate::ops::notify::notify("STOPPING=1");
        let active = tasks.len();
        if active > 0 {
            tracing::info!(
                lanes = active,
                grace_secs = self.cfg.shutdown_grace_secs,
                "stopping: letting in-flight calls finish"
            );
        }
        lanes_stop.cancel();
        let grace = Duration::from_secs(self.cfg.shutdown_grace_secs);
        let drained = tokio::time::timeout(grace, async {
            while let Some(done) = tasks.join_next_with_id().await {
                self.finished(done, &mut task_lanes);
            }
        })
        .await;
        if drained.is_err() {
            // An aborted call may still land at the provider. Its lane is
            // not released: it stays leased until its lease runs out, and
            // the lease outlives the call's timeout (the fence, on both
            // clocks), so nobody reconciles it before it can have landed.
            tracing::warn!(
                lanes = tasks.len(),
                "grace period over: cutting calls short; their lanes stay leased until the lease \
                 runs out, then are reconciled"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            self.held.lock().clear();
        }
        heartbeat.abort();
        rates_stop.cancel();
        let _ = rates.await;
        let _ = sweep.await;
        let _ = listen.await;
        let _ = self.store.unregister_worker(self.id).await;
        let halted: Vec<(String, String)> = self
            .halted
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let stuck = if idle_exit {
            let live = self.live_targets();
            db_retry_forever(
                &CancellationToken::new(),
                "list lanes waiting on an operator",
                || self.store.stuck_lanes(&live),
            )
            .await
            .unwrap_or_default()
        } else {
            Vec::new()
        };
        tracing::info!(worker = %self.id, "worker stopped");
        Ok(RunReport { halted, stuck })
    }

    /// Drops a finished lane task's lease from the heartbeat. A lane task
    /// that panicked is logged and its lease left to expire, so another
    /// worker reconciles whatever it had in flight.
    fn finished(
        &self,
        done: Result<(tokio::task::Id, i64), tokio::task::JoinError>,
        task_lanes: &mut HashMap<tokio::task::Id, i64>,
    ) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        if let Some(lane_id) = task_lanes.remove(&id) {
            if let Err(e) = &done {
                if e.is_panic() {
                    tracing::error!(
                        lane = lane_id,
                        "lane task panicked; its lease will expire and the lane resume elsewhere"
                    );
                }
            }
            self.held.lock().remove(&lane_id);
        }
    }

    /// Renews every lease this process holds, a few times per lease period.
    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let every = self.lease() / 3;
        loop {
            // Once draining, `stop` stays cancelled: renew on the clock
            // only, or this loop would renew back to back all the grace.
            if stop.is_cancelled() {
                tokio::time::sleep(every).await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => {}
                }
            }
            self.at(HookPoint::BeforeRenew).await;
            let held: Vec<(i64, i64)> = {
                let h = self.held.lock();
                h.iter().map(|(id, x)| (*id, x.token)).collect()
            };
            let started = now_ms();
            match self.store.renew_leases(self.id, &held, self.lease()).await {
                Ok(kept) => {
                    let kept: std::collections::HashSet<i64> = kept.into_iter().collect();
                    let h = self.held.lock();
                    for (id, token) in &held {
                        let Some(x) = h.get(id).filter(|x| x.token == *token) else {
                            continue;
                        };
                        if kept.contains(id) {
                            // A lane that is finishing set FINISHING; leave it.
                            let _ = x
                                .valid_until
                                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                                    (v != FINISHING).then_some(started + self.lease().as_millis() as i64)
                                });
                        } else if x.valid_until.load(Ordering::Acquire) != FINISHING {
                            tracing::warn!(lane = id, "lease lost; stopping that lane");
                            metrics::counter!(crate::ops::metrics::LEASES_LOST).increment(1);
                            x.cancel.cancel();
                        }
                    }
                }
                Err(e) => {
                    let _ = store::is_transient(&e); // notes a failover
                    tracing::warn!(error = %e, "cannot renew leases; lanes stop sending before their leases run out")
                }
            }
        }
    }
}

/// Most woken lanes logged one by one per sweep; the rest are counted.
const WOKEN_LOGGED: usize = 50;

/// Warns about each lane found with work and nothing to wake it: that is
/// a bug (or a loader killed between its commit and its wake-up).
fn log_woken(woken: &[store::StrandedLane]) {
    for l in woken.iter().take(WOKEN_LOGGED) {
        tracing::warn!(
            lane = l.lane_id,
            target_name = %l.target,
            was_blocked_at = ?l.blocked_job,
            was_paused_by = ?l.paused_batch,
            "woke a lane that had work and nothing to wake it"
        );
    }
    if woken.len() > WOKEN_LOGGED {
        tracing::warn!(
            more = woken.len() - WOKEN_LOGGED,
            "woke more lanes that had work and nothing to wake them"
        );
    }
}

/// `LISTEN`s for live work (the ingest API's `NOTIFY` after its commit)
/// and wakes the claim loop at once instead of at its next poll. After a
/// lost connection it wakes the loop too: a notice may have been missed.
async fn listen_live(w: Arc<Worker>, wake: Arc<tokio::sync::Notify>, stop: CancellationToken) {
    let store = &w.store;
    let mut delay = Duration::from_millis(200);
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect_with(store.pool()).await?;
            l.listen(store::LIVE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut l = tokio::select! {
            l = listener => l,
            _ = stop.cancelled() => return,
        };
        match &mut l {
            Ok(l) => loop {
                delay = Duration::from_millis(200);
                wake.notify_one();
                tokio::select! {
                    n = l.recv() => match n {
                        Ok(n) => w.live_news(n.payload()),
                        Err(e) => {
                            tracing::warn!(error = %e, "live work notices lost; listening again");
                            break;
                        }
                    },
                    _ = stop.cancelled() => return,
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot listen for live work; polling meanwhile")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Retries a database call on transient errors until it works or shutdown.
async fn db_retry_forever<T, F, Fut>(shutdown: &CancellationToken, what: &str, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                let _ = store::is_transient(&e); // notes a failover
                tracing::warn!(error = %e, retry_in = ?delay, "cannot {what}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Retry delay after `attempt` attempts: exponential from `retry_min_ms`
/// to `retry_max_ms`, with full jitter (`crate::backoff`).
pub fn retry_delay(cfg: &WorkerConfig, attempt: i32) -> Duration {
    let base = Duration::from_millis(cfg.retry_min_ms.max(1));
    let cap = Duration::from_millis(cfg.retry_max_ms.max(cfg.retry_min_ms.max(1)));
    crate::backoff::Backoff::new(base, cap).delay(attempt.clamp(1, 64) as u32)
}

pub(crate) fn lane_now_ms() -> i64 {
    now_ms()
}
