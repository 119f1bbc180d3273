//! Settling a lane's head that may already be at the provider, before
//! anything later in the lane is sent. It waits until the job's latest
//! in-flight mark is `reconcile_settle_secs` old (a late landing must be
//! visible first), and a reconcile that cannot decide backs off until the
//! job fails.

use super::decide::{self, Admit, HeadStep, Stop};
use super::lane::Lane;
use super::retry_delay;
use crate::ops::metrics as om;
use crate::providers::SendJob;
use crate::store::OpenJob;

/// How many of the lane's recorded message ids a reconcile is shown.
const KNOWN_IDS: i64 = 200;

/// Reconciles the lane's in-doubt head `job`: skip it (the provider holds
/// it), send it (it does not), or stop the lane.
pub(crate) async fn head(lane: &Lane, job: &OpenJob) -> Admit {
    let ctx = &lane.ctx;
    if let Some(wait) = decide::settle_first(ctx.target.provider.reconcile_settles(), job) {
        tracing::debug!(
            job = job.id,
            wait_ms = job.settle_wait_ms,
            "in doubt; waiting for it to settle"
        );
        return match lane.defer(job.id, wait).await {
            true => Admit::Stop(Stop::Release),
            false => Admit::Stop(Stop::Lost),
        };
    }
    let Some(known) = lane
        .db("read the lane's checkpoints", || {
            ctx.store.recent_msg_ids(lane.id(), KNOWN_IDS)
        })
        .await
    else {
        return Admit::Stop(Stop::Lost);
    };
    let ask = SendJob {
        known_ids: &known,
        ..lane.send_job(job, job.attempts)
    };
    let result = ctx.target.provider.reconcile(&ask).await;
    metrics::counter!(om::RECONCILES, "target" => lane.target().to_string(), "result" => result.label())
        .increment(1);
    let backoff = retry_delay(&ctx.cfg, job.reconcile_attempts + 1);
    let step = decide::after_reconcile(result, job, &ctx.policy, backoff);
    let recorded = record(lane, job, &step).await;
    decide::after_head(&step, job.id, recorded, &ctx.policy)
}

/// Writes what a reconcile decided; false when the lease moved on.
async fn record(lane: &Lane, job: &OpenJob, step: &HeadStep) -> bool {
    match step {
        HeadStep::Checkpoint(ids) => lane.done(job.id, ids.clone()).await.is_ok(),
        HeadStep::Send => true,
        HeadStep::Undecided { reason, delay } => lane.reconcile_undecided(job.id, reason, *delay).await,
        HeadStep::GiveUp { reason } => {
            tracing::warn!(job = job.id, source_id = job.source_id, "{reason}");
            lane.fail(job.id, None, reason).await
        }
        HeadStep::Halt { reason } => {
            lane.ctx.halts.halt(lane.target(), reason);
            true
        }
    }
}
