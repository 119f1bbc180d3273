//! One lane, run in order: each call framed by a durable in_flight mark
//! before it leaves and a durable outcome after it answers. A ZIM lane has
//! at most one call in flight (ZEGO asks for imports in send-time order);
//! a Tencent lane may have a window of them (`worker.lane_window`), since
//! Tencent orders a conversation by the messages' own fields.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{lane_now_ms, retry_delay, Worker};
use crate::ops::metrics as om;
use crate::providers::{Outcome, Reconciled, SendJob};
use crate::store::{self, ClaimedLane, JobStatus, Lease, OpenJob, Park, ProviderIds};

/// Why a lane stopped before it ran out of work.
enum Stop {
    /// Give the lane back (retry later, shutdown, halted target).
    Release,
    /// Park the lane at this failed job (`on_permanent_error = "block"`).
    Block(i64),
    /// Park the lane: its next job's batch is paused.
    Paused(i64),
    /// The lease is gone: touch nothing.
    Lost,
}

/// Runs a claimed lane until it is empty, must wait, or is told to stop.
pub(super) async fn run(
    w: Arc<Worker>,
    lane: ClaimedLane,
    cancel: CancellationToken,
    valid_until: Arc<AtomicI64>,
) {
    let lease = lane.lease.clone();
    let stop = work(&w, &lane, &cancel, &valid_until).await;
    let park = match stop {
        Stop::Lost => return,
        Stop::Release => Park::No,
        Stop::Block(job) => Park::Blocked(job),
        Stop::Paused(batch) => Park::Paused(batch),
    };
    w.at(super::HookPoint::BeforeRelease {
        lane: lease.lane_id,
        park,
    })
    .await;
    // From here on the lane needs no fence: it only gives the lease back.
    let deadline = valid_until.swap(super::FINISHING, Ordering::AcqRel);
    let valid_until = AtomicI64::new(deadline);
    let released = with_db(&valid_until, "release the lane", || {
        w.store.release_lane(&lease, park)
    })
    .await;
    if released == Some(false) {
        tracing::debug!(lane = lease.lane_id, "lease had moved on before release");
    }
}

/// Retries a database call on transient errors while the lease is still
/// ours; None when it could not be done in time (the lease will expire and
/// whatever is in flight is reconciled by the next holder).
async fn with_db<T, F, Fut>(valid_until: &AtomicI64, what: &str, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e)
                if store::is_transient(&e)
                    && lane_now_ms() + (delay.as_millis() as i64) < valid_until.load(Ordering::Acquire) =>
            {
                tracing::warn!(error = %e, retry_in = ?delay, "database unavailable; cannot {what} yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot {what}; leaving the lane to its lease");
                return None;
            }
        }
    }
}

/// What one call came to (its outcome recorded, except an acceptance's).
enum Call {
    /// Accepted; the done checkpoint is the caller's to write (a ZIM lane
    /// groups it with the next job's in-flight mark).
    Accepted { job: i64, ids: ProviderIds },
    /// Recorded; the lane goes on.
    Next,
    /// A rate-limit answer: the job is pending again, due now. The limit
    /// is known, so this was a slight overshoot: re-read and resend.
    Again(i64),
    /// Recorded; the lane stops.
    Stop(Stop),
}

/// A job marked in flight, waiting for its slot and its call.
struct Marked {
    job: OpenJob,
    attempt: i32,
    cycle_start: std::time::Instant,
    paced: Duration,
}

async fn work(
    w: &Arc<Worker>,
    lane: &ClaimedLane,
    cancel: &CancellationToken,
    valid_until: &Arc<AtomicI64>,
) -> Stop {
    let target = &w.targets[&lane.target];
    // Under "block" a refused message must stop its lane before anything
    // later leaves, which a window cannot promise.
    let skip = matches!(w.cfg.on_permanent_error, crate::config::OnPermanentError::Skip);
    if target.provider.orders_by_time() && w.cfg.lane_window > 1 && skip {
        windowed(w, lane, cancel, valid_until, w.cfg.lane_window).await
    } else {
        one_at_a_time(w, lane, cancel, valid_until).await
    }
}

/// What a lane does with its next open job before it may be sent.
enum Gate {
    /// Send it.
    Go,
    /// Settled by a reconcile: go on to the next.
    Skip,
    /// The lane stops here.
    Stop(Stop),
}

/// The checks every job passes before its mark: stop signals, a paused
/// batch, a retry time, and an in-doubt head's reconcile.
async fn gate(
    w: &Worker,
    lane: &ClaimedLane,
    cancel: &CancellationToken,
    job: &OpenJob,
    valid_until: &AtomicI64,
) -> Gate {
    if cancel.is_cancelled() || w.is_halted(&lane.target) {
        return Gate::Stop(Stop::Release);
    }
    if job.paused {
        return Gate::Stop(Stop::Paused(job.batch_id));
    }
    if job.wait_ms > 0 {
        return Gate::Stop(Stop::Release);
    }
    if job.needs_reconcile() {
        let send = send_job(lane, job, job.attempts);
        return match reconcile_head(w, lane, job, &send, valid_until).await {
            Head::Settled => Gate::Skip,
            Head::Send => Gate::Go,
            Head::Stop(stop) => Gate::Stop(stop),
        };
    }
    Gate::Go
}

fn send_job<'a>(lane: &'a ClaimedLane, job: &'a OpenJob, attempt: i32) -> SendJob<'a> {
    SendJob {
        job_id: job.id,
        body: &job.body,
        lane_key: lane.lane_key.as_str(),
        attempt,
        known_ids: &[],
        first_mark_ms: job.first_mark_ms,
        start_by: None,
    }
}

/// Whether the lease leaves room for a call that starts now: it must end,
/// timeout included, with a tenth of the lease to spare, so no other
/// worker can hold the lane meanwhile.
fn room_for_a_call(w: &Worker, valid_until: &AtomicI64) -> bool {
    valid_until.load(Ordering::Acquire) - lane_now_ms() >= w.cfg.request_timeout_ms as i64 + margin_ms(w)
}

fn margin_ms(w: &Worker) -> i64 {
    (w.cfg.lease_secs as i64 * 100).max(200)
}

/// The fence the in-flight mark checks on the database's clock.
fn fence(w: &Worker) -> Duration {
    Duration::from_millis((w.cfg.request_timeout_ms as i64 + margin_ms(w)) as u64)
}

/// Paces, checks the lease and marks a job in flight.
async fn pace_and_mark(
    w: &Worker,
    lane: &ClaimedLane,
    cancel: &CancellationToken,
    job: OpenJob,
    valid_until: &AtomicI64,
) -> Result<Marked, Stop> {
    let target = &w.targets[&lane.target];
    let cycle_start = std::time::Instant::now();
    tokio::select! {
        // Live work (the cut-over) gets the first share of the rate.
        _ = async { w.may_send().await; target.bucket.pace_as(lane.live || job.live || job.lane_live).await } => {}
        _ = cancel.cancelled() => return Err(Stop::Release),
    }
    let paced = cycle_start.elapsed();
    if !room_for_a_call(w, valid_until) {
        tracing::warn!(
            lane = lane.lease.lane_id,
            "lease too close to expiry to start a call; giving the lane back"
        );
        return Err(Stop::Release);
    }
    w.at(super::HookPoint::BeforeMark {
        lane: lane.lease.lane_id,
        job: job.id,
    })
    .await;
    let attempt = mark(w, &lane.lease, job.id, valid_until).await?;
    Ok(Marked {
        job,
        attempt,
        cycle_start,
        paced,
    })
}

async fn mark(w: &Worker, lease: &Lease, job: i64, valid_until: &AtomicI64) -> Result<i32, Stop> {
    match with_db(valid_until, "mark the job in flight", || {
        w.checkpoints.mark_in_flight(lease, job, fence(w))
    })
    .await
    {
        Some(Some(a)) => Ok(a),
        Some(None) => {
            refused_mark(lease);
            Err(Stop::Lost)
        }
        None => Err(Stop::Lost),
    }
}

fn refused_mark(lease: &Lease) {
    tracing::warn!(
        lane = lease.lane_id,
        "the in-flight mark was refused: the lease moved on, or is too short on the database's clock"
    );
}

/// Waits for the marked job's slot; None (with the lane to give back) when
/// the lease ran short meanwhile: the job stays in doubt and is settled by
/// the next holder, as after a crash.
async fn slot(w: &Worker, lane: &ClaimedLane, m: &Marked, valid_until: &AtomicI64) -> Option<Stop> {
    w.targets[&lane.target].bucket.until_ready().await;
    metrics::counter!(om::RATE_WAIT_MS, "target" => lane.target.clone())
        .increment(m.cycle_start.elapsed().as_micros() as u64 / 1000);
    if valid_until.load(Ordering::Acquire) - lane_now_ms() < w.cfg.request_timeout_ms as i64 {
        tracing::warn!(
            lane = lane.lease.lane_id,
            "lease ran short while waiting for a slot; giving the lane back"
        );
        return Some(Stop::Release);
    }
    None
}

/// ZIM and any provider that orders by arrival: one call at a time. An
/// accepted job's checkpoint is committed together with the next job's
/// in-flight mark when the next job may go at once, so a lane waits for
/// one commit per message instead of two.
async fn one_at_a_time(
    w: &Worker,
    lane: &ClaimedLane,
    cancel: &CancellationToken,
    valid_until: &AtomicI64,
) -> Stop {
    let lease = &lane.lease;
    // The next job, marked with its predecessor's checkpoint.
    let mut premarked: Option<Marked> = None;
    loop {
        if cancel.is_cancelled() || w.is_halted(&lane.target) {
            return Stop::Release;
        }
        let Some(jobs) = with_db(valid_until, "read the lane", || {
            w.store.open_jobs(
                lease.lane_id,
                w.cfg.prefetch,
                w.settle(&lane.target),
                w.targets[&lane.target].provider.orders_by_time(),
            )
        })
        .await
        else {
            return Stop::Lost;
        };
        if jobs.is_empty() {
            return Stop::Release;
        }
        let mut jobs = jobs.into_iter().peekable();
        while let Some(job) = jobs.next() {
            // Live work arrived: read again, so the lane is paced as live
            // (ZIM keeps its send-time order).
            if premarked.is_none() && lane.news.swap(false, Ordering::AcqRel) {
                break;
            }
            let m = match premarked.take() {
                Some(m) if m.job.id == job.id => m,
                // Marked but not next after all (cannot happen: the lane
                // is ours); it stays in doubt and is reconciled.
                Some(_) => return Stop::Release,
                None => {
                    match gate(w, lane, cancel, &job, valid_until).await {
                        Gate::Go => {}
                        Gate::Skip => continue,
                        Gate::Stop(stop) => return stop,
                    }
                    match pace_and_mark(w, lane, cancel, job, valid_until).await {
                        Ok(m) => m,
                        Err(stop) => return stop,
                    }
                }
            };
            if let Some(stop) = slot(w, lane, &m, valid_until).await {
                return stop;
            }
            match call(w, lane, &m, valid_until).await {
                Call::Accepted { job, ids } => {
                    let next = jobs
                        .peek()
                        .filter(|n| may_premark(w, lane, cancel, n, valid_until));
                    let next_marked = match next {
                        Some(n) => done_then_mark(w, lane, job, &ids, n.clone(), valid_until).await,
                        None => done(w, lease, job, &ids, valid_until).await.map(|()| None),
                    };
                    match next_marked {
                        Ok(n) => premarked = n,
                        Err(stop) => return stop,
                    }
                    // The pace wait is the rate's share of the cycle, not lane work.
                    w.record_cycle(m.cycle_start.elapsed().saturating_sub(m.paced));
                }
                Call::Next => {}
                Call::Again(_) => break,
                Call::Stop(stop) => return stop,
            }
        }
    }
}

/// Whether the next job may be marked right now, with its predecessor's
/// checkpoint: nothing to wait for, nothing to reconcile, and its rate
/// slot free at once (a lane never holds a checkpoint back for the rate).
fn may_premark(
    w: &Worker,
    lane: &ClaimedLane,
    cancel: &CancellationToken,
    n: &OpenJob,
    valid_until: &AtomicI64,
) -> bool {
    !cancel.is_cancelled()
        && !w.is_halted(&lane.target)
        && !n.paused
        && n.wait_ms <= 0
        && !n.needs_reconcile()
        && w.may_send_now()
        && room_for_a_call(w, valid_until)
        && w.targets[&lane.target].bucket.try_pace()
}

/// Checkpoints an accepted job alone.
async fn done(
    w: &Worker,
    lease: &Lease,
    job: i64,
    ids: &ProviderIds,
    valid_until: &AtomicI64,
) -> Result<(), Stop> {
    match with_db(valid_until, "checkpoint", || {
        w.checkpoints.record_done(lease, job, ids)
    })
    .await
    {
        Some(true) => Ok(()),
        _ => Err(Stop::Lost),
    }
}

/// Checkpoints an accepted job and marks the next one in flight in the
/// same commit. A refused mark leaves the next job as it was.
async fn done_then_mark(
    w: &Worker,
    lane: &ClaimedLane,
    job: i64,
    ids: &ProviderIds,
    next: OpenJob,
    valid_until: &AtomicI64,
) -> Result<Option<Marked>, Stop> {
    let lease = &lane.lease;
    let cycle_start = std::time::Instant::now();
    w.at(super::HookPoint::BeforeMark {
        lane: lease.lane_id,
        job: next.id,
    })
    .await;
    let written = with_db(valid_until, "checkpoint and mark the next job", || {
        w.checkpoints.done_then_mark(lease, job, ids, next.id, fence(w))
    })
    .await;
    match written {
        Some((true, Some(attempt))) => Ok(Some(Marked {
            job: next,
            attempt,
            cycle_start,
            paced: Duration::ZERO,
        })),
        Some((true, None)) => {
            refused_mark(lease);
            Err(Stop::Lost)
        }
        _ => Err(Stop::Lost),
    }
}

/// Tencent: up to `window` calls in flight in one lane. Tencent shows a
/// conversation by MsgTimeStamp then MsgSeq and deduplicates on the triple
/// (see `Provider::orders_by_time`), so arrival order does not change
/// what users see; but the API updates the conversation, so the lane's
/// last open job (its newest message) is sent only once every earlier one
/// is done. Checkpoints stay per job and exact; the first call that does
/// not succeed stops new sends, the window drains, and the lane stops.
async fn windowed(
    w: &Arc<Worker>,
    lane: &ClaimedLane,
    cancel: &CancellationToken,
    valid_until: &Arc<AtomicI64>,
    window: usize,
) -> Stop {
    let lease = &lane.lease;
    // Jobs sent in this run that are in flight or done: a re-read skips them.
    let mut launched = HashSet::new();
    // Calls run as tasks of their own, each paced, marked and sent while
    // the others are; dropping the set (the lane cut short) aborts them.
    let mut flight = JoinSet::new();
    let shared = Arc::new(lane.clone());
    let limit = w.cfg.prefetch.max(8 * window as i64);
    let stop = 'lane: loop {
        if cancel.is_cancelled() || w.is_halted(&lane.target) {
            break Stop::Release;
        }
        let Some(jobs) = with_db(valid_until, "read the lane", || {
            w.store
                .open_jobs(lease.lane_id, limit, w.settle(&lane.target), true)
        })
        .await
        else {
            break Stop::Lost;
        };
        let full = jobs.len() as i64 >= limit;
        let last = jobs.len().saturating_sub(1);
        // Calls in flight grow with the lane's backlog: every call waits
        // for the shared rate alike, so the lanes that will take longest
        // get the most of it, and a hot conversation does not finish
        // alone long after the rest (a short lane sends one at a time).
        let width = (jobs.len() / 8).clamp(1, window);
        let fresh: Vec<(usize, OpenJob)> = jobs
            .into_iter()
            .enumerate()
            .filter(|(_, j)| !launched.contains(&j.id))
            .collect();
        if fresh.is_empty() && flight.is_empty() {
            break Stop::Release;
        }
        for (i, job) in fresh {
            // Live work arrived: read again, so it goes first.
            if lane.news.swap(false, Ordering::AcqRel) {
                continue 'lane;
            }
            // The last of a full read may not be the lane's last: read on.
            if full && i == last {
                break;
            }
            // A head in doubt, and the newest message, wait for the window.
            let alone = job.needs_reconcile() || i == last;
            let room = if alone { 0 } else { width - 1 };
            match wait_for_room(&mut flight, room, &mut launched).await {
                Room::Yes => {}
                Room::Reread => continue 'lane,
                Room::Stop(stop) => break 'lane stop,
            }
            match gate(w, lane, cancel, &job, valid_until).await {
                Gate::Go => {}
                Gate::Skip => continue,
                Gate::Stop(stop) => break 'lane stop,
            }
            launched.insert(job.id);
            let (w, lane, valid_until, cancel) =
                (w.clone(), shared.clone(), valid_until.clone(), cancel.clone());
            flight.spawn(async move { windowed_call(&w, &lane, &cancel, job, &valid_until).await });
        }
        // Nothing more to send from this read: let one call finish first.
        let room = flight.len().saturating_sub(1);
        if let Room::Stop(stop) = wait_for_room(&mut flight, room, &mut launched).await {
            break 'lane stop;
        }
    };
    drain(flight, stop).await
}

/// What waiting for the window decided.
enum Room {
    /// At most the asked number of calls are in flight.
    Yes,
    /// A call was rate-limited: its job is open again, read the lane anew.
    Reread,
    /// A call stopped the lane.
    Stop(Stop),
}

/// Waits until at most `room` calls are in flight.
async fn wait_for_room(flight: &mut JoinSet<Call>, room: usize, launched: &mut HashSet<i64>) -> Room {
    while flight.len() > room {
        match flight.join_next().await.map(joined) {
            Some(Call::Next) | Some(Call::Accepted { .. }) | None => {}
            Some(Call::Again(id)) => {
                launched.remove(&id);
                return Room::Reread;
            }
            Some(Call::Stop(stop)) => return Room::Stop(stop),
        }
    }
    Room::Yes
}

/// A call task that panicked (a bug) loses the lane: its job stays in
/// flight and the next holder settles it.
fn joined(r: Result<Call, tokio::task::JoinError>) -> Call {
    r.unwrap_or_else(|e| {
        tracing::error!(error = %e, "a call task failed");
        Call::Stop(Stop::Lost)
    })
}

/// One windowed call, whole: paced, marked, sent in its slot, and its
/// outcome checkpointed, acceptance too. The marks of a window's calls
/// overlap, so a hot lane is not held to one commit round trip per call.
async fn windowed_call(
    w: &Worker,
    lane: &ClaimedLane,
    cancel: &CancellationToken,
    job: OpenJob,
    valid_until: &AtomicI64,
) -> Call {
    let m = match pace_and_mark(w, lane, cancel, job, valid_until).await {
        Ok(m) => m,
        Err(stop) => return Call::Stop(stop),
    };
    if let Some(stop) = slot(w, lane, &m, valid_until).await {
        return Call::Stop(stop);
    }
    match call(w, lane, &m, valid_until).await {
        Call::Accepted { job, ids } => match done(w, &lane.lease, job, &ids, valid_until).await {
            Ok(()) => {
                w.record_cycle(m.cycle_start.elapsed().saturating_sub(m.paced));
                Call::Next
            }
            Err(stop) => Call::Stop(stop),
        },
        other => other,
    }
}

/// Lets the calls still in flight finish (each records its own outcome);
/// a lost lease among them wins over a plain stop.
async fn drain(mut flight: JoinSet<Call>, stop: Stop) -> Stop {
    let mut stop = stop;
    while let Some(c) = flight.join_next().await.map(joined) {
        if let Call::Stop(Stop::Lost) = c {
            stop = Stop::Lost;
        }
    }
    stop
}

/// Sends a marked job and records what came back, but an acceptance.
async fn call(w: &Worker, lane: &ClaimedLane, m: &Marked, valid_until: &AtomicI64) -> Call {
    let lease = &lane.lease;
    let target = &w.targets[&lane.target];
    let job = &m.job;
    let attempt = m.attempt;
    // A second call (a fresh signature or UserSig) only if it still ends
    // inside the lease.
    let left_ms = valid_until.load(Ordering::Acquire) - lane_now_ms() - w.cfg.request_timeout_ms as i64;
    let send = SendJob {
        start_by: Some(std::time::Instant::now() + Duration::from_millis(left_ms.max(0) as u64)),
        ..send_job(lane, job, attempt)
    };
    let started = std::time::Instant::now();
    let outcome = target.provider.send(&send).await;
    let took = started.elapsed();
    om::call(&lane.target, "send", outcome.code(), outcome.label(), took);
    if outcome.is_throttled() {
        w.throttled(&lane.target).await;
    }
    match outcome {
        Outcome::Accepted(a) => {
            target.bucket.observe(took);
            w.at(super::HookPoint::BeforeCheckpoint {
                lane: lease.lane_id,
                job: job.id,
            })
            .await;
            let ids = ProviderIds {
                msg_id: a.msg_id,
                msg_seq: a.msg_seq,
                request_id: a.request_id,
            };
            Call::Accepted { job: job.id, ids }
        }
        Outcome::RetryLater {
            code,
            reason,
            delay,
            throttled,
        } => {
            retry_later(
                w,
                lease,
                job,
                attempt,
                code,
                &reason,
                delay,
                throttled,
                valid_until,
            )
            .await
        }
        Outcome::Permanent { code, reason } => {
            tracing::info!(
                job = job.id,
                source_id = job.source_id,
                ?code,
                reason,
                "message refused for good"
            );
            after_fail(fail(w, lease, valid_until, job.id, code, &reason).await)
        }
        Outcome::Unknown { code, reason } => {
            tracing::debug!(job = job.id, ?code, reason, "outcome unknown; will reconcile");
            // Without dedup, the reconcile waits the settle time
            // from now, when the answer came: a request the
            // provider still holds lands before it reads the view.
            let mut delay = retry_delay(&w.cfg, attempt).min(Duration::from_secs(5));
            if target.provider.reconcile_settles() {
                delay = delay.max(w.settle(&lane.target));
            }
            let why = format!("outcome unknown: {reason}");
            Call::Stop(retry(w, lease, valid_until, job.id, code, &why, delay, true).await)
        }
        Outcome::Halt { code, reason } => {
            // Refused before anything was applied: the job goes back
            // to pending, untouched, for when the target is fixed.
            let r = retry(
                w,
                lease,
                valid_until,
                job.id,
                code,
                &reason,
                Duration::ZERO,
                false,
            )
            .await;
            w.halt(&lane.target, &reason);
            Call::Stop(r)
        }
    }
}

/// A "try again later" answer: a rate-limit answer is resent at once
/// (paced again; the nudge slowed the pace), anything else waits.
#[allow(clippy::too_many_arguments)]
async fn retry_later(
    w: &Worker,
    lease: &Lease,
    job: &OpenJob,
    attempt: i32,
    code: Option<i64>,
    reason: &str,
    delay: Option<Duration>,
    throttled: bool,
    valid_until: &AtomicI64,
) -> Call {
    if w.cfg.max_attempts > 0 && attempt as u32 >= w.cfg.max_attempts {
        let why = format!("gave up after {attempt} attempts: {reason}");
        return after_fail(fail(w, lease, valid_until, job.id, code, &why).await);
    }
    if throttled {
        tracing::debug!(job = job.id, ?code, reason, "rate-limit answer; resending");
        return match retry(w, lease, valid_until, job.id, code, reason, Duration::ZERO, false).await {
            Stop::Release => Call::Again(job.id),
            stop => Call::Stop(stop),
        };
    }
    let delay = delay.unwrap_or_else(|| retry_delay(&w.cfg, attempt));
    tracing::debug!(job = job.id, ?code, reason, ?delay, "retry later");
    Call::Stop(retry(w, lease, valid_until, job.id, code, reason, delay, false).await)
}

/// A failed job under "skip" lets the lane go on.
fn after_fail(stop: Stop) -> Call {
    match stop {
        Stop::Release => Call::Next,
        other => Call::Stop(other),
    }
}

/// What reconciling a lane's head decided.
enum Head {
    /// The provider holds it: checkpointed, go on to the next job.
    Settled,
    /// The provider does not hold it: send it.
    Send,
    /// The lane stops here (waits for the settle time or a retry, halts).
    Stop(Stop),
}

/// Settles a job that may already be at the provider before anything later
/// in the lane is sent. It waits until the job's latest in-flight mark is
/// `reconcile_settle_secs` old (a late landing must be visible first), and
/// a reconcile that cannot decide backs off until the job fails.
async fn reconcile_head(
    w: &Worker,
    lane: &ClaimedLane,
    job: &OpenJob,
    send: &SendJob<'_>,
    valid_until: &AtomicI64,
) -> Head {
    let lease = &lane.lease;
    let target = &w.targets[&lane.target];
    if target.provider.reconcile_settles() && job.settle_wait_ms > 0 {
        tracing::debug!(
            job = job.id,
            wait_ms = job.settle_wait_ms,
            "in doubt; waiting for it to settle"
        );
        let wait = Duration::from_millis(job.settle_wait_ms as u64);
        return match with_db(valid_until, "defer the job", || {
            w.store.defer_job(lease, job.id, wait)
        })
        .await
        {
            Some(true) => Head::Stop(Stop::Release),
            _ => Head::Stop(Stop::Lost),
        };
    }
    let Some(known) = with_db(valid_until, "read the lane's checkpoints", || {
        w.store.recent_msg_ids(lease.lane_id, 200)
    })
    .await
    else {
        return Head::Stop(Stop::Lost);
    };
    let result = target
        .provider
        .reconcile(&SendJob {
            known_ids: &known,
            ..send.clone()
        })
        .await;
    metrics::counter!(om::RECONCILES, "target" => lane.target.clone(), "result" => result.label())
        .increment(1);
    match result {
        Reconciled::Applied(a) => {
            let ids = ProviderIds {
                msg_id: a.msg_id,
                msg_seq: a.msg_seq,
                request_id: a.request_id,
            };
            match with_db(valid_until, "checkpoint", || {
                w.checkpoints.record_done(lease, job.id, &ids)
            })
            .await
            {
                Some(true) => Head::Settled,
                _ => Head::Stop(Stop::Lost),
            }
        }
        Reconciled::NotApplied => Head::Send,
        Reconciled::Unknown { reason } => Head::Stop(undecided(w, lease, job, &reason, valid_until).await),
        Reconciled::Halt { reason, .. } => {
            w.halt(&lane.target, &reason);
            Head::Stop(Stop::Release)
        }
    }
}

/// A reconcile that could not decide: back off, and past
/// `max_reconcile_attempts` fail the job with a reason the operator sees.
async fn undecided(w: &Worker, lease: &Lease, job: &OpenJob, reason: &str, valid_until: &AtomicI64) -> Stop {
    let tries = job.reconcile_attempts + 1;
    if tries as u32 >= w.cfg.max_reconcile_attempts {
        let why = format!(
            "could not tell whether the provider holds this message after {tries} reconciles ({reason}); \
             it was not sent again. Check the conversation at the provider, then `chatferry skip` it \
             if it is there or `chatferry retry` it if not"
        );
        tracing::warn!(job = job.id, source_id = job.source_id, "{why}");
        return fail(w, lease, valid_until, job.id, None, &why).await;
    }
    let delay = retry_delay(&w.cfg, tries);
    let why = format!("reconcile {tries}: {reason}");
    match with_db(valid_until, "record the reconcile", || {
        w.store.record_reconcile_unknown(lease, job.id, &why, delay)
    })
    .await
    {
        Some(Some(_)) => Stop::Release,
        _ => Stop::Lost,
    }
}

#[allow(clippy::too_many_arguments)]
async fn retry(
    w: &Worker,
    lease: &Lease,
    valid_until: &AtomicI64,
    job: i64,
    code: Option<i64>,
    reason: &str,
    delay: Duration,
    in_doubt: bool,
) -> Stop {
    match with_db(valid_until, "record the retry", || {
        w.store.record_retry(lease, job, code, reason, delay, in_doubt)
    })
    .await
    {
        Some(true) => Stop::Release,
        _ => Stop::Lost,
    }
}

/// Fails a job; under "block" the lane stops there, under "skip" it goes on
/// (returned as `Release` so the caller continues).
async fn fail(
    w: &Worker,
    lease: &Lease,
    valid_until: &AtomicI64,
    job: i64,
    code: Option<i64>,
    reason: &str,
) -> Stop {
    match with_db(valid_until, "record the failure", || {
        w.store.record_final(lease, job, JobStatus::Failed, code, reason)
    })
    .await
    {
        Some(true) => {}
        _ => return Stop::Lost,
    }
    match w.cfg.on_permanent_error {
        crate::config::OnPermanentError::Skip => Stop::Release,
        crate::config::OnPermanentError::Block => Stop::Block(job),
    }
}
