//! A lane's writes: in-flight marks, done checkpoints (an accepted job's
//! grouped with the next job's mark where it may go at once), retries,
//! failures, reconcile bookkeeping and the release. Each carries the lane's
//! lease and is retried only while the lease lasts; the SQL is in
//! `store::checkpoint` and `store`.

use std::time::{Duration, Instant};

use super::db;
use super::decide::{Step, Stop};
use super::hook::HookPoint;
use super::lane::{Lane, Marked};
use crate::providers::Accepted;
use crate::store::checkpoint::Settle;
use crate::store::{JobStatus, OpenJob, Park, ProviderIds};

/// The ids an acceptance gave, as a done job records them.
fn provider_ids(a: Accepted) -> ProviderIds {
    ProviderIds {
        msg_id: a.msg_id,
        msg_seq: a.msg_seq,
        request_id: a.request_id,
    }
}

/// What a step writes for its job.
fn settle_of(step: &Step) -> Settle<'_> {
    let retry = |code: &Option<i64>, reason, delay, in_doubt| Settle::Retry {
        code: *code,
        reason,
        delay,
        in_doubt,
    };
    match step {
        Step::Checkpoint(ids) => Settle::Done(provider_ids(ids.clone())),
        Step::Resend { code, reason } => retry(code, reason, Duration::ZERO, false),
        Step::Retry { code, reason, delay } => retry(code, reason, *delay, false),
        Step::InDoubt { code, reason, delay } => retry(code, reason, *delay, true),
        Step::Refused { code, reason } | Step::GaveUp { code, reason } => {
            Settle::Failed { code: *code, reason }
        }
        // Refused before anything was applied: the job goes back to
        // pending, untouched, for when the target is fixed.
        Step::Halt { code, reason } => retry(code, reason, Duration::ZERO, false),
    }
}

fn refused_mark(lane: &Lane) {
    tracing::warn!(
        lane = lane.id(),
        "the in-flight mark was refused: the lease moved on, or is too short on the database's clock"
    );
}

impl Lane {
    /// Runs a database call for this lane, retried while its lease lasts.
    pub(crate) async fn db<T, F, Fut>(&self, what: &str, f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        db::within_lease(&self.deadline, what, f).await
    }

    /// The lane's next open jobs, at most `limit`.
    pub(crate) async fn read(&self, limit: i64) -> Result<Vec<OpenJob>, Stop> {
        let ctx = &self.ctx;
        let settle = ctx.target.settle();
        let live_first = ctx.target.provider.orders_by_time();
        self.db("read the lane", || {
            ctx.store.open_jobs(self.id(), limit, settle, live_first)
        })
        .await
        .ok_or(Stop::Lost)
    }

    /// Marks a job in flight; returns its attempt number.
    pub(crate) async fn mark(&self, job: i64) -> Result<i32, Stop> {
        let ctx = &self.ctx;
        let fence = ctx.fit.fence();
        let marked = self
            .db("mark the job in flight", || {
                ctx.checkpoints.mark_in_flight(self.lease(), job, fence)
            })
            .await;
        match marked {
            Some(Some(attempt)) => Ok(attempt),
            Some(None) => {
                refused_mark(self);
                Err(Stop::Lost)
            }
            None => Err(Stop::Lost),
        }
    }

    /// Checkpoints an accepted job alone.
    pub(crate) async fn done(&self, job: i64, ids: Accepted) -> Result<(), Stop> {
        self.done_with(job, provider_ids(ids)).await
    }

    async fn done_with(&self, job: i64, ids: ProviderIds) -> Result<(), Stop> {
        let checkpoints = &self.ctx.checkpoints;
        match self
            .db("checkpoint", || checkpoints.record_done(self.lease(), job, &ids))
            .await
        {
            Some(true) => Ok(()),
            _ => Err(Stop::Lost),
        }
    }

    /// Checkpoints an accepted job; with `next`, marks it in flight in the
    /// same commit and returns it marked.
    pub(crate) async fn accepted(
        &self,
        job: i64,
        ids: Accepted,
        next: Option<OpenJob>,
    ) -> Result<Option<Marked>, Stop> {
        match next {
            Some(next) => self.done_then_mark(job, ids, next).await.map(Some),
            None => self.done(job, ids).await.map(|()| None),
        }
    }

    /// Checkpoints an accepted job and marks the next one in flight in the
    /// same commit. A refused mark leaves the next job as it was.
    async fn done_then_mark(&self, job: i64, ids: Accepted, next: OpenJob) -> Result<Marked, Stop> {
        let ctx = &self.ctx;
        let ids = provider_ids(ids);
        let cycle_start = Instant::now();
        ctx.hooks
            .at(HookPoint::BeforeMark {
                lane: self.id(),
                job: next.id,
            })
            .await;
        let fence = ctx.fit.fence();
        let written = self
            .db("checkpoint and mark the next job", || {
                ctx.checkpoints
                    .done_then_mark(self.lease(), job, &ids, next.id, fence)
            })
            .await;
        match written.map(|w| (w.done, w.attempt)) {
            Some((true, Some(attempt))) => Ok(Marked::ahead(next, attempt, cycle_start)),
            Some((true, None)) => {
                refused_mark(self);
                Err(Stop::Lost)
            }
            _ => Err(Stop::Lost),
        }
    }

    /// Marks the next job in flight ahead of its call, while the job
    /// before it is in flight (its rate slot already taken).
    async fn premark(&self, next: OpenJob) -> Result<Marked, Stop> {
        let cycle_start = Instant::now();
        let point = HookPoint::BeforeMark {
            lane: self.id(),
            job: next.id,
        };
        self.ctx.hooks.at(point).await;
        let attempt = self.mark(next.id).await?;
        Ok(Marked::ahead(next, attempt, cycle_start))
    }

    /// The write that rides along with a call in flight: its predecessor's
    /// checkpoint (`owed`) and the next job's mark, in one commit.
    pub(crate) async fn write_ahead(
        &self,
        owed: Option<(i64, Accepted)>,
        next: Option<OpenJob>,
    ) -> Result<Option<Marked>, Stop> {
        match (owed, next) {
            (Some((job, ids)), next) => self.accepted(job, ids, next).await,
            (None, Some(next)) => self.premark(next).await.map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Records what an answer led to; `unmark`: a later job marked while
    /// this one was in flight, whose mark is taken back in the same
    /// transaction. False when the lease moved on.
    pub(crate) async fn record(&self, step: &Step, job: i64, unmark: Option<i64>) -> bool {
        let settle = settle_of(step);
        let recorded = match unmark {
            Some(next) => self.settle_unmarking(job, settle, next).await,
            None => self.settle(job, settle).await,
        };
        if let Step::Halt { reason, .. } = step {
            self.ctx.halts.halt(self.target(), reason);
        }
        recorded
    }

    async fn settle(&self, job: i64, settle: Settle<'_>) -> bool {
        match settle {
            Settle::Done(ids) => self.done_with(job, ids).await.is_ok(),
            Settle::Retry {
                code,
                reason,
                delay,
                in_doubt,
            } => self.retry(job, code, reason, delay, in_doubt).await,
            Settle::Failed { code, reason } => self.fail(job, code, reason).await,
        }
    }

    async fn settle_unmarking(&self, job: i64, settle: Settle<'_>, next: i64) -> bool {
        let store = &self.ctx.store;
        self.db("record the outcome and unmark the next job", || {
            store.settle_unmarking(self.lease(), job, settle.clone(), next)
        })
        .await
            == Some(true)
    }

    /// Schedules another attempt after `delay`; `in_doubt` keeps the job
    /// in flight so the next attempt reconciles first.
    async fn retry(
        &self,
        job: i64,
        code: Option<i64>,
        reason: &str,
        delay: Duration,
        in_doubt: bool,
    ) -> bool {
        let store = &self.ctx.store;
        self.db("record the retry", || {
            store.record_retry(self.lease(), job, code, reason, delay, in_doubt)
        })
        .await
            == Some(true)
    }

    /// Fails a job with its code and reason.
    pub(crate) async fn fail(&self, job: i64, code: Option<i64>, reason: &str) -> bool {
        let store = &self.ctx.store;
        self.db("record the failure", || {
            store.record_final(self.lease(), job, JobStatus::Failed, code, reason)
        })
        .await
            == Some(true)
    }

    /// Holds an in-doubt job until it has settled.
    pub(crate) async fn defer(&self, job: i64, wait: Duration) -> bool {
        let store = &self.ctx.store;
        self.db("defer the job", || store.defer_job(self.lease(), job, wait))
            .await
            == Some(true)
    }

    /// Counts a reconcile that could not decide; the next one after `delay`.
    pub(crate) async fn reconcile_undecided(&self, job: i64, reason: &str, delay: Duration) -> bool {
        let store = &self.ctx.store;
        self.db("record the reconcile", || {
            store.record_reconcile_unknown(self.lease(), job, reason, delay)
        })
        .await
        .flatten()
        .is_some()
    }

    /// Gives the lease back, parked as `park`. From here on the lane needs
    /// no fence: the heartbeat leaves it alone, and the release may take
    /// until the lease's end.
    pub(crate) async fn release(&self, park: Park) {
        let deadline = self.deadline.finish();
        let store = &self.ctx.store;
        let released = db::within_lease(&deadline, "release the lane", || {
            store.release_lane(self.lease(), park)
        })
        .await;
        if released == Some(false) {
            tracing::debug!(lane = self.id(), "lease had moved on before release");
        }
    }
}
