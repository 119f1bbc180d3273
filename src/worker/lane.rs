//! One lane, run in order: each call framed by a durable in_flight mark
//! before it leaves and a durable outcome after it answers. A ZIM lane has
//! at most one call in flight (ZEGO asks for imports in send-time order);
//! a Tencent lane may have a window of them (`worker.lane_window`, see
//! `window`), since Tencent orders a conversation by the messages' own
//! fields.
//!
//! The runners (`in_order`, `window`) are short loops over the steps
//! here: admit the head (gate it, reconcile it if in doubt), mark it, send
//! it, settle the outcome. What each answer leads to is decided in
//! `decide`; the writes are in `checkpoint`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::clock::{CallFit, Deadline};
use super::decide::{self, Admit, Call, Gate, Policy, Step, Stop};
use super::hook::{HookPoint, Hooks};
use super::rate::Rates;
use super::target::{Halts, Target};
use super::{in_order, reconcile, retry_delay, window};
use crate::config::WorkerConfig;
use crate::ops::metrics as om;
use crate::providers::{Outcome, SendJob};
use crate::store::checkpoint::Checkpoints;
use crate::store::{ClaimedLane, Lease, OpenJob, Store};

/// What a lane needs from the worker, handed in when it starts: one per
/// target, shared by its lanes.
pub(crate) struct Ctx {
    pub store: Store,
    pub checkpoints: Checkpoints,
    pub target: Arc<Target>,
    pub cfg: Arc<WorkerConfig>,
    pub policy: Policy,
    pub fit: CallFit,
    pub halts: Arc<Halts>,
    pub rates: Arc<Rates>,
    pub hooks: Arc<Hooks>,
    /// Where a windowed lane's calls run (the run's tracker).
    pub tracker: TaskTracker,
}

/// A claimed lane, running.
pub(crate) struct Lane {
    pub ctx: Arc<Ctx>,
    pub claimed: ClaimedLane,
    /// Told to stop: shutdown, or its lease was lost.
    pub cancel: CancellationToken,
    /// The lease's local deadline (the heartbeat moves it on).
    pub deadline: Arc<Deadline>,
}

/// A job marked in flight, waiting for its slot and its call.
pub(crate) struct Marked {
    pub job: OpenJob,
    pub attempt: i32,
    pub cycle_start: Instant,
    /// Time spent waiting for the rate: its share of the cycle, not lane work.
    pub paced: Duration,
}

impl Marked {
    /// A job marked ahead of its call, its rate slot taken at once.
    pub fn ahead(job: OpenJob, attempt: i32, cycle_start: Instant) -> Marked {
        Marked {
            job,
            attempt,
            cycle_start,
            paced: Duration::ZERO,
        }
    }

    /// The lane's own part of this job's cycle so far.
    pub fn cycle(&self) -> Duration {
        self.cycle_start.elapsed().saturating_sub(self.paced)
    }
}

impl Lane {
    pub(crate) fn id(&self) -> i64 {
        self.claimed.lease.lane_id
    }

    pub(crate) fn lease(&self) -> &Lease {
        &self.claimed.lease
    }

    /// The target's name.
    pub(crate) fn target(&self) -> &str {
        &self.claimed.target
    }

    /// Told to stop, or the target halted.
    pub(crate) fn stopping(&self) -> bool {
        self.cancel.is_cancelled() || self.ctx.halts.is_halted(self.target())
    }

    /// Whether live work arrived since last asked (the lane reads anew).
    pub(crate) fn news(&self) -> bool {
        self.claimed.news.swap(false, Ordering::AcqRel)
    }

    /// A job as the provider sees it, for attempt `attempt`.
    pub(crate) fn send_job<'a>(&'a self, job: &'a OpenJob, attempt: i32) -> SendJob<'a> {
        SendJob {
            job_id: job.id,
            body: &job.body,
            lane_key: self.claimed.lane_key.as_str(),
            attempt,
            known_ids: &[],
            first_mark_ms: job.first_mark_ms,
            start_by: None,
        }
    }
}

/// Runs a claimed lane until it is empty, must wait, or is told to stop,
/// then gives the lease back.
pub(crate) async fn run(lane: Arc<Lane>) {
    let ctx = &lane.ctx;
    let window = ctx
        .policy
        .window(ctx.target.provider.orders_by_time(), ctx.cfg.lane_window);
    let stop = match window {
        Some(window) => window::run(&lane, window).await,
        None => in_order::run(&lane).await,
    };
    if let Some(park) = stop.park() {
        ctx.hooks
            .at(HookPoint::BeforeRelease {
                lane: lane.id(),
                park,
            })
            .await;
        lane.release(park).await;
    }
}

/// Admits the lane's next job (see [`admit`]) and marks it in flight;
/// None when a reconcile settled it.
pub(crate) async fn admit_and_mark(lane: &Lane, job: OpenJob) -> Result<Option<Marked>, Stop> {
    match admit(lane, &job).await {
        Admit::Send => pace_and_mark(lane, job).await.map(Some),
        Admit::Skip => Ok(None),
        Admit::Stop(stop) => Err(stop),
    }
}

/// The checks every job passes before its mark: stop signals, a paused
/// batch, a retry time, and an in-doubt head's reconcile.
pub(crate) async fn admit(lane: &Lane, job: &OpenJob) -> Admit {
    match decide::gate(lane.stopping(), job) {
        Gate::Send => Admit::Send,
        Gate::Reconcile => reconcile::head(lane, job).await,
        Gate::Stop(stop) => Admit::Stop(stop),
    }
}

/// Whether the next job may be marked right now, with its predecessor's
/// checkpoint: nothing to wait for, nothing to reconcile, and its rate
/// slot free at once (a lane never holds a checkpoint back for the rate).
pub(crate) fn may_premark(lane: &Lane, next: &OpenJob) -> bool {
    let ctx = &lane.ctx;
    decide::gate(lane.stopping(), next) == Gate::Send
        && ctx.rates.may_send_now()
        && ctx.fit.room_for_a_call(&lane.deadline)
        && ctx.target.bucket.try_pace()
}

/// Paces, checks the lease and marks a job in flight.
pub(crate) async fn pace_and_mark(lane: &Lane, job: OpenJob) -> Result<Marked, Stop> {
    let ctx = &lane.ctx;
    let cycle_start = Instant::now();
    let live = lane.claimed.live || job.live || job.lane_live;
    tokio::select! {
        // Live work (the cut-over) gets the first share of the rate.
        _ = async { ctx.rates.may_send().await; ctx.target.bucket.pace_as(live).await } => {}
        _ = lane.cancel.cancelled() => return Err(Stop::Release),
    }
    let paced = cycle_start.elapsed();
    // The target may have halted (or the lane been cut) during the wait.
    if lane.stopping() {
        return Err(Stop::Release);
    }
    if !ctx.fit.room_for_a_call(&lane.deadline) {
        tracing::warn!(
            lane = lane.id(),
            "lease too close to expiry to start a call; giving the lane back"
        );
        return Err(Stop::Release);
    }
    ctx.hooks
        .at(HookPoint::BeforeMark {
            lane: lane.id(),
            job: job.id,
        })
        .await;
    let attempt = lane.mark(job.id).await?;
    Ok(Marked {
        job,
        attempt,
        cycle_start,
        paced,
    })
}

/// Sends a marked job in its slot; what its answer leads to, or a stop
/// when the lease ran short meanwhile.
pub(crate) async fn send_one(lane: &Lane, m: &Marked) -> Result<Step, Stop> {
    if let Some(stop) = slot(lane, m).await {
        return Err(stop);
    }
    let (outcome, took) = send(lane, m).await;
    let ctx = &lane.ctx;
    let backoff = retry_delay(&ctx.cfg, m.attempt);
    let settle = ctx.target.settle_before_reconcile();
    let step = decide::after_send(outcome, m.attempt, &ctx.policy, backoff, settle);
    if let Step::Checkpoint(_) = step {
        ctx.target.bucket.observe(took);
        let point = HookPoint::BeforeCheckpoint {
            lane: lane.id(),
            job: m.job.id,
        };
        ctx.hooks.at(point).await;
    }
    Ok(step)
}

/// Records what an answer led to, but an acceptance (unless a later job's
/// mark, `unmark`, must be taken back with it): where the lane goes next.
pub(crate) async fn settle(lane: &Lane, m: &Marked, step: Step, unmark: Option<i64>) -> Call {
    let job = m.job.id;
    if let (Step::Checkpoint(ids), None) = (&step, unmark) {
        return Call::Accepted {
            job,
            ids: ids.clone(),
        };
    }
    log_step(&step, &m.job);
    let recorded = lane.record(&step, job, unmark).await;
    decide::after_record(&step, job, recorded, &lane.ctx.policy)
}

/// Waits for the marked job's slot; a stop (the lane to give back) when
/// the lease ran short meanwhile: the job stays in doubt and is settled by
/// the next holder, as after a crash.
async fn slot(lane: &Lane, m: &Marked) -> Option<Stop> {
    let ctx = &lane.ctx;
    ctx.target.bucket.until_ready().await;
    metrics::counter!(om::RATE_WAIT_MS, "target" => lane.target().to_string())
        .increment(m.cycle_start.elapsed().as_micros() as u64 / 1000);
    if !ctx.fit.may_start(&lane.deadline) {
        tracing::warn!(
            lane = lane.id(),
            "lease ran short while waiting for a slot; giving the lane back"
        );
        return Some(Stop::Release);
    }
    None
}

/// The call itself: the provider's answer and how long it took. A
/// rate-limit answer nudges the target's rate down at once.
async fn send(lane: &Lane, m: &Marked) -> (Outcome, Duration) {
    let ctx = &lane.ctx;
    // A second call (a fresh signature or UserSig) only if it still ends
    // inside the lease.
    let send = SendJob {
        start_by: Some(Instant::now() + ctx.fit.start_within(&lane.deadline)),
        ..lane.send_job(&m.job, m.attempt)
    };
    let started = Instant::now();
    let outcome = ctx.target.provider.send(&send).await;
    let took = started.elapsed();
    om::call(lane.target(), "send", outcome.code(), outcome.label(), took);
    if outcome.is_throttled() {
        ctx.rates.throttled(lane.target()).await;
    }
    (outcome, took)
}

/// Logs a step before it is recorded (a halt logs itself).
fn log_step(step: &Step, job: &OpenJob) {
    match step {
        Step::Resend { code, reason } => {
            tracing::debug!(job = job.id, ?code, reason, "rate-limit answer; resending")
        }
        Step::Retry { code, reason, delay } => {
            tracing::debug!(job = job.id, ?code, reason, ?delay, "retry later")
        }
        Step::InDoubt { code, reason, .. } => {
            tracing::debug!(job = job.id, ?code, reason, "outcome unknown; will reconcile")
        }
        Step::Refused { code, reason } => tracing::info!(
            job = job.id,
            source_id = job.source_id,
            ?code,
            reason,
            "message refused for good"
        ),
        Step::Checkpoint(_) | Step::GaveUp { .. } | Step::Halt { .. } => {}
    }
}
