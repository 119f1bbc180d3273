//! `chatferry run`: claims lanes, runs each strictly in order, and
//! checkpoints every provider answer.
//!
//! One task per claimed lane; at most `worker.concurrency` at once. A
//! heartbeat task renews every lease this process holds and stops a lane
//! whose lease was lost. Each lane also keeps a local deadline: it sends
//! nothing unless its lease outlives the request timeout, so a worker cut
//! off from the database stops sending before another may take over.
//!
//! The pieces, as a job queue has them:
//!
//! - `claim`: claiming lanes into free slots, live lanes first, and what
//!   wakes the claim loop (the `LISTEN` for live work, the sweep);
//! - `heartbeat`: the leases held, their renewal, and the drain at shutdown;
//! - `rate`: this process's share of each target's rate;
//! - `lane`: the steps of a lane; `in_order` runs them one call at a
//!   time (ZIM), `window` with several calls in flight (Tencent);
//! - `reconcile`: settling an in-doubt head before the lane goes on;
//! - `decide`: what each answer leads to, as pure functions;
//! - `checkpoint`: a lane's writes, under its lease;
//! - `clock`: the worker's time and each lease's deadline on it;
//! - `db`: database calls retried through a failover;
//! - `target`, `hook`: the targets and their halts; test hooks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{Config, WorkerConfig};
use crate::providers::Provider;
use crate::store::{self, Store};

mod checkpoint;
mod claim;
mod clock;
mod db;
mod decide;
mod heartbeat;
mod hook;
mod in_order;
mod lane;
mod rate;
mod reconcile;
mod target;
mod window;

pub use hook::{Hook, HookPoint};
pub use rate::{NUDGE, RECOVER_PER_SEC};
pub use target::Target;

use claim::LaneTasks;
use clock::{CallFit, Clock, Deadline};
use heartbeat::{Heartbeat, Leases};
use hook::Hooks;
use rate::Rates;
use target::{Halts, Targets};

/// How a run ended.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Targets that stopped on an auth or config error, with the reason.
    pub halted: Vec<(String, String)>,
    /// With `--exit-when-idle`: lanes whose open jobs wait on an operator
    /// (paused batch, blocked lane). Empty when every job is finished.
    pub stuck: Vec<store::StuckLane>,
}

/// A worker process.
pub struct Worker {
    store: Store,
    cfg: Arc<WorkerConfig>,
    id: Uuid,
    targets: Arc<Targets>,
    halts: Arc<Halts>,
    leases: Arc<Leases>,
    rates: Arc<Rates>,
    clock: Clock,
    /// Set once shutdown began (`/readyz` says not ready).
    pub draining: Arc<AtomicBool>,
    /// Group commit for in-flight marks and done checkpoints.
    checkpoints: store::checkpoint::Checkpoints,
    /// Set only by tests (see [`HookPoint`]).
    hooks: Arc<Hooks>,
}

/// What one `run` holds: its tasks, what stops them, and the lanes' contexts.
struct Running {
    /// Every task the run starts: background tasks, lanes, a lane's calls.
    tracker: TaskTracker,
    tasks: LaneTasks,
    /// Tells the lanes to finish the call they are in and stop.
    lanes_stop: CancellationToken,
    /// Stops the heartbeat, rate control, the sweep and the listener.
    background_stop: CancellationToken,
    /// Rung when live work arrives.
    live_wake: Arc<Notify>,
    /// What each target's lanes are handed.
    ctxs: HashMap<String, Arc<lane::Ctx>>,
}

impl Worker {
    /// Builds a worker for every configured target.
    pub fn new(store: Store, config: &Config, providers: Vec<(String, Arc<dyn Provider>)>) -> Arc<Worker> {
        let settle = Duration::from_secs(config.worker.reconcile_settle_secs);
        let timeout = Duration::from_millis(config.worker.request_timeout_ms);
        let targets: Arc<Targets> = Arc::new(
            providers
                .into_iter()
                .map(|(name, provider)| {
                    let rate = config.targets[&name].rate_per_sec();
                    (name, Arc::new(Target::new(provider, rate, settle, timeout)))
                })
                .collect(),
        );
        let id = Uuid::new_v4();
        let clock = Clock::new();
        Arc::new(Worker {
            checkpoints: store::checkpoint::Checkpoints::start(store.clone()),
            rates: Arc::new(Rates::new(store.clone(), id, targets.clone(), clock)),
            store,
            cfg: Arc::new(config.worker.clone()),
            id,
            targets,
            halts: Arc::default(),
            leases: Arc::default(),
            clock,
            draining: Arc::new(AtomicBool::new(false)),
            hooks: Arc::default(),
        })
    }

    /// Installs a test hook (once); production code never sets one.
    pub fn set_hook(&self, hook: Hook) {
        self.hooks.set(hook);
    }

    /// Applies reloaded limits (SIGHUP): target name → documented rate.
    pub fn set_limits(&self, config: &Config) {
        for (name, t) in self.targets.iter() {
            if let Some(tc) = config.targets.get(name) {
                t.bucket.set_limit(tc.rate_per_sec());
            }
        }
    }

    /// Targets halted so far, with why (read by the dashboard and the
    /// `chatferry_target_halted` gauge).
    pub fn halted_targets(&self) -> Vec<(String, String)> {
        self.halts.list()
    }

    /// Lanes this process holds now (`chatferry_lanes_active`).
    pub fn lanes_held(&self) -> usize {
        self.leases.len()
    }

    /// This process's share of each target's rate (calls/s) and the active
    /// workers it is split among (read by the dashboard).
    pub fn rate_shares(&self) -> (u32, Vec<(String, f64)>) {
        self.rates.shares()
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.cfg.lease_secs)
    }

    /// Runs until `shutdown` fires, or, with `exit_when_idle`, until no
    /// lane of a live target has work left.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        exit_when_idle: bool,
    ) -> anyhow::Result<RunReport> {
        self.start(&shutdown).await;
        let mut run = self.running();
        self.spawn_background(&run);
        crate::ops::notify::notify("READY=1");
        let idle_exit = self.claim_loop(&shutdown, exit_when_idle, &mut run).await;

        // Drain: lanes finish the call they are in, checkpoint it and stop.
        self.draining.store(true, Ordering::Release);
        crate::ops::notify::notify("STOPPING=1");
        let grace = Duration::from_secs(self.cfg.shutdown_grace_secs);
        heartbeat::drain(&mut run.tasks, &self.leases, &run.lanes_stop, grace).await;
        run.background_stop.cancel();
        run.tracker.close();
        run.tracker.wait().await;
        Ok(self.finish(idle_exit).await)
    }

    /// Registers the worker, wakes stranded lanes, reads probe findings and
    /// takes this process's share of the rates.
    async fn start(&self, shutdown: &CancellationToken) {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into());
        db::retry_forever(shutdown, "register the worker", || {
            self.store.register_worker(self.id, &host)
        })
        .await;
        if let Some(woken) = db::retry_forever(shutdown, "look for stranded lanes", || {
            self.store.wake_stranded_lanes()
        })
        .await
        {
            claim::log_woken(&woken);
        }
        target::apply_probe_findings(&self.store, &self.targets, self.cfg.request_timeout_ms).await;
        tracing::info!(worker = %self.id, concurrency = self.cfg.concurrency, targets = ?self.targets.keys().collect::<Vec<_>>(), "worker started");
        // Take this process's share before the first call: a replica that
        // joins must not start at the full rate.
        self.rates.refresh(!self.leases.is_empty()).await;
    }

    /// A run's tracker, tokens and lane contexts.
    fn running(&self) -> Running {
        let tracker = TaskTracker::new();
        let ctxs = self
            .targets
            .iter()
            .map(|(name, target)| {
                let ctx = lane::Ctx {
                    store: self.store.clone(),
                    checkpoints: self.checkpoints.clone(),
                    target: target.clone(),
                    cfg: self.cfg.clone(),
                    policy: decide::Policy::new(&self.cfg),
                    fit: CallFit::new(&self.cfg),
                    halts: self.halts.clone(),
                    rates: self.rates.clone(),
                    hooks: self.hooks.clone(),
                    tracker: tracker.clone(),
                };
                (name.clone(), Arc::new(ctx))
            })
            .collect();
        Running {
            tasks: LaneTasks::new(tracker.clone()),
            tracker,
            lanes_stop: CancellationToken::new(),
            background_stop: CancellationToken::new(),
            live_wake: Arc::new(Notify::new()),
            ctxs,
        }
    }

    /// Starts the heartbeat, rate control, the sweep and the listener.
    fn spawn_background(&self, run: &Running) {
        let stop = &run.background_stop;
        let heartbeat = Heartbeat {
            store: self.store.clone(),
            worker: self.id,
            leases: self.leases.clone(),
            lease: self.lease(),
            hooks: self.hooks.clone(),
            clock: self.clock,
        };
        let t = &run.tracker;
        t.spawn(heartbeat.run(run.lanes_stop.clone(), stop.clone()));
        t.spawn(self.rates.clone().run(self.leases.clone(), stop.clone()));
        let every = Duration::from_secs(self.cfg.sweep_secs);
        t.spawn(claim::sweep(self.store.clone(), every, stop.clone()));
        let wake = run.live_wake.clone();
        t.spawn(claim::listen_live(
            self.store.clone(),
            self.leases.clone(),
            wake,
            stop.clone(),
        ));
    }

    /// Starts a claimed lane's task; `claim_started` is when the claim
    /// was asked for, on this worker's clock.
    fn start_lane(&self, claimed: store::ClaimedLane, claim_started: i64, run: &mut Running) {
        let cancel = run.lanes_stop.child_token();
        let deadline = Arc::new(Deadline::new(self.clock, claim_started, self.lease()));
        self.leases.hold(&claimed, cancel.clone(), deadline.clone());
        let lane_id = claimed.lease.lane_id;
        let lane = Arc::new(lane::Lane {
            ctx: run.ctxs[&claimed.target].clone(),
            claimed,
            cancel,
            deadline,
        });
        run.tasks.spawn(lane_id, lane::run(lane));
    }

    /// After the drain: unregisters, and reports halts and stuck lanes.
    async fn finish(&self, idle_exit: bool) -> RunReport {
        let _ = self.store.unregister_worker(self.id).await;
        let halted = self.halts.list();
        let stuck = if idle_exit {
            let live = self.halts.live(&self.targets);
            db::retry_forever(
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
        RunReport { halted, stuck }
    }
}

/// Retry delay after `attempt` attempts: exponential from `retry_min_ms`
/// to `retry_max_ms`, with full jitter (`crate::backoff`).
pub fn retry_delay(cfg: &WorkerConfig, attempt: i32) -> Duration {
    let base = Duration::from_millis(cfg.retry_min_ms.max(1));
    let cap = Duration::from_millis(cfg.retry_max_ms.max(cfg.retry_min_ms.max(1)));
    crate::backoff::Backoff::new(base, cap).delay(attempt.clamp(1, 64) as u32)
}
