//! One lane, run strictly in order: at most one call in flight, each call
//! framed by a durable in_flight mark before it leaves and a durable
//! outcome after it answers.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{lane_now_ms, retry_delay, Worker};
use crate::ops::metrics as om;
use crate::providers::{Accepted, Outcome, Reconciled, SendJob};
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

async fn work(w: &Worker, lane: &ClaimedLane, cancel: &CancellationToken, valid_until: &AtomicI64) -> Stop {
    let lease = &lane.lease;
    let target = &w.targets[&lane.target];
    let timeout_ms = w.cfg.request_timeout_ms as i64;
    // A call may only start if it ends, timeout included, with a tenth of
    // the lease to spare: then no other worker can hold the lane meanwhile.
    let margin_ms = (w.cfg.lease_secs as i64 * 100).max(200);
    let live_first = target.provider.orders_by_time();
    loop {
        if cancel.is_cancelled() || w.is_halted(&lane.target) {
            return Stop::Release;
        }
        let Some(jobs) = with_db(valid_until, "read the lane", || {
            w.store
                .open_jobs(lease.lane_id, w.cfg.prefetch, w.settle(&lane.target), live_first)
        })
        .await
        else {
            return Stop::Lost;
        };
        if jobs.is_empty() {
            return Stop::Release;
        }
        let mut skipped = false;
        let mut reread = false;
        for job in jobs {
            // Live work arrived: read again, so it goes first (Tencent)
            // or the lane is paced as live (ZIM).
            if lane.news.swap(false, Ordering::AcqRel) {
                reread = true;
                break;
            }
            if cancel.is_cancelled() || w.is_halted(&lane.target) {
                return Stop::Release;
            }
            if job.paused {
                return Stop::Paused(job.batch_id);
            }
            if job.wait_ms > 0 {
                // Placed by its time, a live job waiting for its retry
                // holds nothing up: the rest of the lane goes on.
                if live_first && job.live {
                    skipped = true;
                    continue;
                }
                return Stop::Release;
            }
            let send = SendJob {
                job_id: job.id,
                body: &job.body,
                lane_key: &lane.lane_key,
                attempt: job.attempts,
                known_ids: &[],
                first_mark_ms: job.first_mark_ms,
                start_by: None,
            };
            if job.needs_reconcile() {
                match reconcile_head(w, lane, &job, &send, valid_until).await {
                    Head::Settled => continue,
                    Head::Send => {}
                    Head::Stop(stop) => return stop,
                }
            }
            // Paced, then marked in flight, then sent in this call's slot:
            // the mark's commit time varies, the slot does not.
            let waited = std::time::Instant::now();
            let cycle_start = waited;
            tokio::select! {
                _ = async { w.may_send().await; target.bucket.pace_as(lane.live || job.live || job.lane_live).await } => {}
                _ = cancel.cancelled() => return Stop::Release,
            }
            let paced = waited.elapsed();
            if valid_until.load(Ordering::Acquire) - lane_now_ms() < timeout_ms + margin_ms {
                tracing::warn!(
                    lane = lease.lane_id,
                    "lease too close to expiry to start a call; giving the lane back"
                );
                return Stop::Release;
            }
            w.at(super::HookPoint::BeforeMark {
                lane: lease.lane_id,
                job: job.id,
            })
            .await;
            // The same fence, on the database's clock, in the mark itself.
            let fence = Duration::from_millis((timeout_ms + margin_ms) as u64);
            let attempt = match with_db(valid_until, "mark the job in flight", || {
                w.checkpoints.mark_in_flight(lease, job.id, fence)
            })
            .await
            {
                Some(Some(a)) => a,
                Some(None) => {
                    tracing::warn!(
                        lane = lease.lane_id,
                        "the in-flight mark was refused: the lease moved on, or is too short on the database's clock"
                    );
                    return Stop::Lost;
                }
                None => return Stop::Lost,
            };
            target.bucket.until_ready().await;
            metrics::counter!(om::RATE_WAIT_MS, "target" => lane.target.clone())
                .increment(waited.elapsed().as_micros() as u64 / 1000);
            if valid_until.load(Ordering::Acquire) - lane_now_ms() < timeout_ms {
                // Marked but never sent: it stays in doubt and is settled
                // by the next holder, as after a crash.
                tracing::warn!(
                    lane = lease.lane_id,
                    "lease ran short while waiting for a slot; giving the lane back"
                );
                return Stop::Release;
            }
            let left_ms = valid_until.load(Ordering::Acquire) - lane_now_ms() - timeout_ms;
            let send = SendJob {
                attempt,
                start_by: Some(std::time::Instant::now() + Duration::from_millis(left_ms.max(0) as u64)),
                ..send
            };
            let started = std::time::Instant::now();
            let outcome = target.provider.send(&send).await;
            let (code, label) = match &outcome {
                Outcome::Accepted(_) => (Some(0), "accepted"),
                Outcome::RetryLater {
                    code,
                    throttled: true,
                    ..
                } => (*code, "throttled"),
                Outcome::RetryLater { code, .. } => (*code, "retry_later"),
                Outcome::Permanent { code, .. } => (*code, "permanent"),
                Outcome::Unknown { code, .. } => (*code, "unknown"),
                Outcome::Halt { code, .. } => (*code, "halt"),
            };
            om::call(&lane.target, "send", code, label, started.elapsed());
            if label == "throttled" {
                w.throttled(&lane.target).await;
            }
            match outcome {
                Outcome::Accepted(a) => {
                    w.at(super::HookPoint::BeforeCheckpoint {
                        lane: lease.lane_id,
                        job: job.id,
                    })
                    .await;
                    if !checkpoint_done(w, lease, job.id, a, valid_until).await {
                        return Stop::Lost;
                    }
                    // The pace wait is the rate's share of the cycle, not lane work.
                    w.record_cycle(cycle_start.elapsed().saturating_sub(paced));
                }
                Outcome::RetryLater {
                    code,
                    reason,
                    delay,
                    throttled,
                } => {
                    if w.cfg.max_attempts > 0 && attempt as u32 >= w.cfg.max_attempts {
                        let why = format!("gave up after {attempt} attempts: {reason}");
                        return fail(w, lease, valid_until, job.id, code, &why).await;
                    }
                    let delay = delay.unwrap_or_else(|| {
                        if throttled {
                            Duration::from_secs(1).max(retry_delay(&w.cfg, attempt))
                        } else {
                            retry_delay(&w.cfg, attempt)
                        }
                    });
                    tracing::debug!(job = job.id, ?code, reason, ?delay, "retry later");
                    return retry(w, lease, valid_until, job.id, code, &reason, delay, false).await;
                }
                Outcome::Permanent { code, reason } => {
                    tracing::info!(
                        job = job.id,
                        source_id = job.source_id,
                        ?code,
                        reason,
                        "message refused for good"
                    );
                    match fail(w, lease, valid_until, job.id, code, &reason).await {
                        Stop::Release => {}
                        other => return other,
                    }
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
                    return retry(
                        w,
                        lease,
                        valid_until,
                        job.id,
                        code,
                        &format!("outcome unknown: {reason}"),
                        delay,
                        true,
                    )
                    .await;
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
                    return r;
                }
            }
        }
        if skipped && !reread {
            // Only live jobs waiting for their retry are left in this
            // read; the release wakes the lane at the oldest one's time.
            return Stop::Release;
        }
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
            if checkpoint_done(w, lease, job.id, a, valid_until).await {
                Head::Settled
            } else {
                Head::Stop(Stop::Lost)
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

/// Records a job done with the ids the provider gave it; false when the
/// lease moved on or the database could not be reached in time.
async fn checkpoint_done(w: &Worker, lease: &Lease, job: i64, a: Accepted, valid_until: &AtomicI64) -> bool {
    let ids = ProviderIds {
        msg_id: a.msg_id,
        msg_seq: a.msg_seq,
        request_id: a.request_id,
    };
    with_db(valid_until, "checkpoint", || {
        w.checkpoints.record_done(lease, job, &ids)
    })
    .await
        == Some(true)
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
