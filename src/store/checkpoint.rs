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

use super::{is_transient, Lease, ProviderIds, Store};

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
        reply: oneshot::Sender<Result<(bool, Option<i32>), sqlx::Error>>,
    },
}

/// What one round applied: the jobs marked (with their attempt) and the
/// jobs checkpointed done.
type Applied = (Vec<(i64, i32)>, Vec<i64>);

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
    /// returns whether the checkpoint was taken and the mark's attempt (as
    /// [`Checkpoints::record_done`] and [`Checkpoints::mark_in_flight`]).
    pub async fn done_then_mark(
        &self,
        lease: &Lease,
        job: i64,
        ids: &ProviderIds,
        next: i64,
        min_lease: std::time::Duration,
    ) -> Result<(bool, Option<i32>), sqlx::Error> {
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
        (Ok((marked, _)), Write::InFlight { job, reply, .. }) => {
            let _ = reply.send(Ok(marked.iter().find(|(id, _)| *id == job).map(|x| x.1)));
        }
        (Ok((_, done_ids)), Write::Done { job, reply, .. }) => {
            let _ = reply.send(Ok(done_ids.contains(&job)));
        }
        (Ok((marked, done_ids)), Write::DoneThenMark { job, next, reply, .. }) => {
            let mark = marked.iter().find(|(id, _)| *id == next).map(|x| x.1);
            let _ = reply.send(Ok((done_ids.contains(&job), mark)));
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

impl Store {
    /// Applies a batch of grouped writes in one transaction; returns the
    /// jobs marked (with their attempt) and the jobs checkpointed done.
    /// Writes whose lease moved on are left out of both.
    async fn apply_checkpoints(&self, batch: &[Write]) -> Result<Applied, sqlx::Error> {
        let mut m = (Vec::new(), Vec::new(), Vec::<Uuid>::new(), Vec::new(), Vec::new());
        let mut d = (
            Vec::new(),
            Vec::new(),
            Vec::<Uuid>::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for w in batch {
            match w {
                Write::InFlight {
                    lease,
                    job,
                    min_lease_ms,
                    ..
                } => {
                    m.0.push(*job);
                    m.1.push(lease.lane_id);
                    m.2.push(lease.owner);
                    m.3.push(lease.token);
                    m.4.push(*min_lease_ms);
                }
                Write::Done { lease, job, ids, .. } => {
                    d.0.push(*job);
                    d.1.push(lease.lane_id);
                    d.2.push(lease.owner);
                    d.3.push(lease.token);
                    d.4.push(ids.msg_id.clone());
                    d.5.push(ids.msg_seq);
                    d.6.push(ids.request_id.clone());
                }
                Write::DoneThenMark {
                    lease,
                    job,
                    ids,
                    next,
                    min_lease_ms,
                    ..
                } => {
                    d.0.push(*job);
                    d.1.push(lease.lane_id);
                    d.2.push(lease.owner);
                    d.3.push(lease.token);
                    d.4.push(ids.msg_id.clone());
                    d.5.push(ids.msg_seq);
                    d.6.push(ids.request_id.clone());
                    m.0.push(*next);
                    m.1.push(lease.lane_id);
                    m.2.push(lease.owner);
                    m.3.push(lease.token);
                    m.4.push(*min_lease_ms);
                }
            }
        }
        let mut tx = self.pool.begin().await?;
        let mut marked = Vec::new();
        if !m.0.is_empty() {
            marked = sqlx::query_as(
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
            .bind(&m.0)
            .bind(&m.1)
            .bind(&m.2)
            .bind(&m.3)
            .bind(&m.4)
            .fetch_all(&mut *tx)
            .await?;
        }
        let mut done = Vec::new();
        if !d.0.is_empty() {
            done = sqlx::query_scalar(
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
            .bind(&d.0)
            .bind(&d.1)
            .bind(&d.2)
            .bind(&d.3)
            .bind(&d.4)
            .bind(&d.5)
            .bind(&d.6)
            .fetch_all(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((marked, done))
    }
}
