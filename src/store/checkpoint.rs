//! Group commit for the hot path: every lane's in-flight marks and done
//! checkpoints are gathered into one transaction per round, so the
//! database commits once for many lanes instead of twice per job.
//!
//! A lane still waits for its own write to be durable: the in-flight mark
//! is committed before the lane's request leaves, as without grouping.
//! A single lane gains nothing from other lanes' company, so it may also
//! hand in its accepted job's checkpoint and its next job's in-flight mark
//! as one write (`done_then_mark`): one commit per message.

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{is_transient, FencedJob, JobStatus, Lease, ProviderIds, Store};

/// Writes gathered into one transaction at most.
const MAX_BATCH: usize = 512;

enum Write {
    InFlight {
        lease: Lease,
        job: i64,
        /// The lease must outlive the database's now() by this much.
        min_lease_ms: i64,
        reply: oneshot::Sender<Result<Option<i32>, sqlx::Error>>,
    },
    Done {
        lease: Lease,
        job: i64,
        ids: ProviderIds,
        reply: oneshot::Sender<Result<bool, sqlx::Error>>,
    },
    /// A Done and the next job's InFlight, always in the same transaction.
    DoneThenMark {
        lease: Lease,
        job: i64,
        ids: ProviderIds,
        next: i64,
        min_lease_ms: i64,
        reply: oneshot::Sender<Result<DoneThenMarked, sqlx::Error>>,
    },
}

/// A job an in-flight mark took, with its attempt number.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct MarkedJob {
    id: i64,
    attempts: i32,
}

/// What one round applied. Writes whose lease moved on are in neither list.
#[derive(Debug, Default)]
struct Applied {
    /// The jobs marked in flight.
    marked: Vec<MarkedJob>,
    /// The jobs checkpointed done.
    done: Vec<i64>,
}

impl Applied {
    /// The attempt `job` was marked for, if it was marked.
    fn attempt(&self, job: i64) -> Option<i32> {
        self.marked.iter().find(|m| m.id == job).map(|m| m.attempts)
    }

    /// Whether `job` was checkpointed done.
    fn is_done(&self, job: i64) -> bool {
        self.done.contains(&job)
    }
}

/// What [`Checkpoints::done_then_mark`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoneThenMarked {
    /// The accepted job was checkpointed done.
    pub done: bool,
    /// The next job's attempt, if it was marked in flight.
    pub attempt: Option<i32>,
}

/// What a lane writes for its head job when a later job was already
/// marked in flight with it in view (see [`Store::settle_unmarking`]).
#[derive(Debug, Clone)]
pub enum Settle<'a> {
    /// Accepted: done, with the provider's ids.
    Done(ProviderIds),
    /// Another attempt after `delay` (as [`Store::record_retry`]).
    Retry {
        code: Option<i64>,
        reason: &'a str,
        delay: std::time::Duration,
        in_doubt: bool,
    },
    /// Failed for good (as [`Store::record_final`]).
    Failed { code: Option<i64>, reason: &'a str },
}

/// The handle lanes write through.
#[derive(Clone)]
pub struct Checkpoints {
    tx: mpsc::Sender<Write>,
}

fn gone() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other("checkpoint writer stopped"))
}

/// Rebuilds an error for every writer of a failed batch, keeping whether
/// it is worth retrying.
fn share(e: &sqlx::Error) -> sqlx::Error {
    if is_transient(e) {
        sqlx::Error::Io(std::io::Error::other(e.to_string()))
    } else {
        sqlx::Error::Decode(e.to_string().into())
    }
}

impl Checkpoints {
    /// Starts the writer task.
    pub fn start(store: Store) -> Checkpoints {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer(store, rx));
        Checkpoints { tx }
    }

    /// Marks a job in flight and returns its attempt number; None when the
    /// lease moved on or, on the database's clock, does not outlive
    /// `min_lease` (the request timeout and a margin): the fence holds
    /// even when this host's clock or deadline is wrong.
    pub async fn mark_in_flight(
        &self,
        lease: &Lease,
        job: i64,
        min_lease: std::time::Duration,
    ) -> Result<Option<i32>, sqlx::Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Write::InFlight {
                lease: lease.clone(),
                job,
                min_lease_ms: min_lease.as_millis() as i64,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Records a job done with the provider's ids, grouped with other writes.
    pub async fn record_done(&self, lease: &Lease, job: i64, ids: &ProviderIds) -> Result<bool, sqlx::Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Write::Done {
                lease: lease.clone(),
                job,
                ids: ids.clone(),
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

impl Checkpoints {
    /// Checkpoints `job` done and marks `next` in flight in one commit;
    /// says whether the checkpoint was taken and the mark's attempt (as
    /// [`Checkpoints::record_done`] and [`Checkpoints::mark_in_flight`]).
    pub async fn done_then_mark(
        &self,
        lease: &Lease,
        job: i64,
        ids: &ProviderIds,
        next: i64,
        min_lease: std::time::Duration,
    ) -> Result<DoneThenMarked, sqlx::Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Write::DoneThenMark {
                lease: lease.clone(),
                job,
                ids: ids.clone(),
                next,
                min_lease_ms: min_lease.as_millis() as i64,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = store.apply_checkpoints(&batch).await;
        match result {
            // One bad write (a statement timeout, a NUL byte in a provider
            // id) must not throw every lane of the group into doubt: write
            // them one by one, so only the guilty one fails.
            Err(e) if !is_transient(&e) && batch.len() > 1 => {
                tracing::warn!(error = %e, writes = batch.len(), "a grouped checkpoint failed; writing its writes one by one");
                for w in batch.drain(..) {
                    let alone = store.apply_checkpoints(std::slice::from_ref(&w)).await;
                    answer(&alone, w);
                }
            }
            result => {
                for w in batch.drain(..) {
                    answer(&result, w);
                }
            }
        }
    }
}

/// Replies to one write with its share of a group's result.
fn answer(result: &Result<Applied, sqlx::Error>, w: Write) {
    match (result, w) {
        (Ok(a), Write::InFlight { job, reply, .. }) => {
            let _ = reply.send(Ok(a.attempt(job)));
        }
        (Ok(a), Write::Done { job, reply, .. }) => {
            let _ = reply.send(Ok(a.is_done(job)));
        }
        (Ok(a), Write::DoneThenMark { job, next, reply, .. }) => {
            let _ = reply.send(Ok(DoneThenMarked {
                done: a.is_done(job),
                attempt: a.attempt(next),
            }));
        }
        (Err(e), Write::DoneThenMark { reply, .. }) => {
            let _ = reply.send(Err(share(e)));
        }
        (Err(e), Write::InFlight { reply, .. }) => {
            let _ = reply.send(Err(share(e)));
        }
        (Err(e), Write::Done { reply, .. }) => {
            let _ = reply.send(Err(share(e)));
        }
    }
}

/// In-flight marks as the grouped UPDATE takes them: one array a column.
#[derive(Default)]
struct Marks {
    job: Vec<i64>,
    lane: Vec<i64>,
    owner: Vec<Uuid>,
    token: Vec<i64>,
    /// The lease must outlive the database's now() by this much, ms.
    min_lease_ms: Vec<i64>,
}

impl Marks {
    fn push(&mut self, lease: &Lease, job: i64, min_lease_ms: i64) {
        self.job.push(job);
        self.lane.push(lease.lane_id);
        self.owner.push(lease.owner);
        self.token.push(lease.token);
        self.min_lease_ms.push(min_lease_ms);
    }
}

/// Done checkpoints as the grouped UPDATE takes them: one array a column.
#[derive(Default)]
struct Dones {
    job: Vec<i64>,
    lane: Vec<i64>,
    owner: Vec<Uuid>,
    token: Vec<i64>,
    msg_id: Vec<Option<String>>,
    msg_seq: Vec<Option<i64>>,
    request_id: Vec<Option<String>>,
}

impl Dones {
    fn push(&mut self, lease: &Lease, job: i64, ids: &ProviderIds) {
        self.job.push(job);
        self.lane.push(lease.lane_id);
        self.owner.push(lease.owner);
        self.token.push(lease.token);
        self.msg_id.push(ids.msg_id.clone());
        self.msg_seq.push(ids.msg_seq);
        self.request_id.push(ids.request_id.clone());
    }
}

/// Sorts a round's writes into its marks and its checkpoints.
fn columns(batch: &[Write]) -> (Marks, Dones) {
    let (mut m, mut d) = (Marks::default(), Dones::default());
    for w in batch {
        match w {
            Write::InFlight {
                lease,
                job,
                min_lease_ms,
                ..
            } => m.push(lease, *job, *min_lease_ms),
            Write::Done { lease, job, ids, .. } => d.push(lease, *job, ids),
            Write::DoneThenMark {
                lease,
                job,
                ids,
                next,
                min_lease_ms,
                ..
            } => {
                d.push(lease, *job, ids);
                m.push(lease, *next, *min_lease_ms);
            }
        }
    }
    (m, d)
}

impl Store {
    /// Applies a batch of grouped writes in one transaction; returns the
    /// jobs marked (with their attempt) and the jobs checkpointed done.
    /// Writes whose lease moved on are left out of both.
    async fn apply_checkpoints(&self, batch: &[Write]) -> Result<Applied, sqlx::Error> {
        let (m, d) = columns(batch);
        let mut tx = self.pool.begin().await?;
        let applied = Applied {
            marked: mark_in_flight(&mut tx, &m).await?,
            done: record_done(&mut tx, &d).await?,
        };
        tx.commit().await?;
        Ok(applied)
    }
}

impl Store {
    /// Writes what became of `job` and takes back the in-flight mark of
    /// `premarked`, the next job of its lane, marked while `job` was in
    /// flight but never sent: in one transaction, so a retry never leaves
    /// the next job in doubt. False when the lease moved on (nothing
    /// written).
    pub async fn settle_unmarking(
        &self,
        lease: &Lease,
        job: i64,
        settle: Settle<'_>,
        premarked: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // A mark no longer there (an operator skipped the job) is no reason
        // to leave `job` unsettled.
        unmark(&mut tx, lease, premarked).await?;
        let settled = match settle {
            Settle::Done(ids) => {
                let mut d = Dones::default();
                d.push(lease, job, &ids);
                record_done(&mut tx, &d).await? == [job]
            }
            Settle::Retry {
                code,
                reason,
                delay,
                in_doubt,
            } => super::record_retry(&mut *tx, lease, job, code, reason, delay, in_doubt).await?,
            Settle::Failed { code, reason } => {
                super::record_final(&mut *tx, lease, job, JobStatus::Failed, code, reason).await?
            }
        };
        if settled {
            tx.commit().await?;
        }
        Ok(settled)
    }
}

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

/// Takes back an in-flight mark whose call never left: the job is pending
/// again as before the mark, its attempt uncounted (a first mark's time
/// forgotten too).
async fn unmark(tx: &mut Tx, lease: &Lease, job: i64) -> Result<(), sqlx::Error> {
    sqlx::query(fenced!(
        "UPDATE jobs SET status = 'pending', attempts = attempts - 1, updated_at = now(),
                first_in_flight_at = CASE WHEN first_in_flight_at = in_flight_at THEN NULL
                                          ELSE first_in_flight_at END",
        "AND status = 'in_flight' AND NOT in_doubt"
    ))
    .fenced(lease, job)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks jobs in flight where their lane's lease holds and outlives the
/// fence on the database's clock.
async fn mark_in_flight(tx: &mut Tx, m: &Marks) -> Result<Vec<MarkedJob>, sqlx::Error> {
    if m.job.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "WITH held AS (
            SELECT u.job FROM unnest($1::bigint[], $2::bigint[], $3::uuid[], $4::bigint[], $5::bigint[])
                   AS u(job, lane, owner, token, min_ms)
            JOIN lanes l ON l.id = u.lane AND l.lease_owner = u.owner AND l.lease_token = u.token
                        AND l.lease_until > now() + u.min_ms * interval '1 millisecond'
            FOR KEY SHARE OF l)
         UPDATE jobs j SET status = 'in_flight', attempts = j.attempts + 1, updated_at = now(),
                -- Marking a job that is still in_flight means its last
                -- outcome was never seen: it was in doubt, for good.
                in_doubt = j.in_doubt OR j.status = 'in_flight',
                in_flight_at = now(), first_in_flight_at = coalesce(j.first_in_flight_at, now())
         FROM held WHERE j.id = held.job AND j.status IN ('pending', 'in_flight')
         RETURNING j.id, j.attempts",
    )
    .bind(&m.job)
    .bind(&m.lane)
    .bind(&m.owner)
    .bind(&m.token)
    .bind(&m.min_lease_ms)
    .fetch_all(&mut **tx)
    .await
}

/// Checkpoints jobs done with the provider's ids where their lane's lease
/// holds.
async fn record_done(tx: &mut Tx, d: &Dones) -> Result<Vec<i64>, sqlx::Error> {
    if d.job.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "WITH held AS (
            SELECT u.* FROM unnest($1::bigint[], $2::bigint[], $3::uuid[], $4::bigint[],
                                   $5::text[], $6::bigint[], $7::text[])
                   AS u(job, lane, owner, token, msg_id, msg_seq, request_id)
            JOIN lanes l ON l.id = u.lane AND l.lease_owner = u.owner AND l.lease_token = u.token
            FOR KEY SHARE OF l)
         UPDATE jobs j SET status = 'done', provider_msg_id = held.msg_id,
                provider_msg_seq = held.msg_seq, provider_request_id = held.request_id,
                updated_at = now(), finished_at = now()
         FROM held WHERE j.id = held.job AND j.status IN ('pending', 'in_flight')
         RETURNING j.id",
    )
    .bind(&d.job)
    .bind(&d.lane)
    .bind(&d.owner)
    .bind(&d.token)
    .bind(&d.msg_id)
    .bind(&d.msg_seq)
    .bind(&d.request_id)
    .fetch_all(&mut **tx)
    .await
}
