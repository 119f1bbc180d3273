//! `chatferry purge`: removing a finished batch's jobs.
//!
//! A finished batch keeps every request body; at 100 million messages that
//! is most of the database. Purge deletes in small transactions (each
//! holds its row locks for milliseconds, so workers on other batches never
//! wait long) and then runs a plain `VACUUM`, which takes no lock that
//! blocks reads or writes and makes the space reusable by later loads.
//! Only finished jobs (done, failed, skipped) are ever deleted, whatever
//! happens between the check and the deletes (a `retry` in between puts
//! jobs back to pending, and those stay).

use super::Store;

/// Jobs deleted per transaction.
const PURGE_STEP: i64 = 5000;

/// What a purge finds in a batch (every target's batch of that name).
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct PurgeCheck {
    /// Batches of that name (0: no such batch).
    pub batches: i64,
    pub pending: i64,
    pub in_flight: i64,
    /// Done, failed or skipped: what a purge removes.
    pub finished: i64,
    /// Failed jobs a lane is blocked at: kept, so the lane stays blocked
    /// until an operator retries or skips them.
    pub blocking: i64,
}

impl Store {
    /// The batch's counts, from the counters (no scan of its jobs).
    pub async fn purge_check(&self, batch: &str) -> Result<PurgeCheck, sqlx::Error> {
        sqlx::query_as(
            "SELECT count(DISTINCT b.id) AS batches,
                    coalesce(sum(c.n) FILTER (WHERE c.status = 'pending'), 0)::bigint AS pending,
                    coalesce(sum(c.n) FILTER (WHERE c.status = 'in_flight'), 0)::bigint AS in_flight,
                    coalesce(sum(c.n) FILTER (WHERE c.status IN ('done', 'failed', 'skipped')), 0)::bigint
                        AS finished,
                    (SELECT count(*) FROM lanes l JOIN jobs j ON j.id = l.blocked_job
                      JOIN batches bb ON bb.id = j.batch_id WHERE bb.name = $1) AS blocking
             FROM batches b LEFT JOIN job_counts c ON c.batch_id = b.id
             WHERE b.name = $1",
        )
        .bind(batch)
        .fetch_one(&self.pool)
        .await
    }

    /// Deletes up to one step of the batch's finished jobs in its own
    /// transaction; returns how many went (0: nothing left to delete).
    pub async fn purge_step(&self, batch: &str) -> Result<u64, sqlx::Error> {
        let n = sqlx::query(
            "DELETE FROM jobs WHERE ctid = ANY(ARRAY(
                 SELECT j.ctid FROM batches b JOIN jobs j ON j.batch_id = b.id
                 WHERE b.name = $1 AND j.status IN ('done', 'failed', 'skipped')
                   AND NOT EXISTS (SELECT 1 FROM lanes l WHERE l.blocked_job = j.id)
                 LIMIT $2))",
        )
        .bind(batch)
        .bind(PURGE_STEP)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Makes the deleted rows' space reusable (and refreshes statistics).
    /// A plain VACUUM: reads and writes go on while it runs.
    pub async fn vacuum_jobs(&self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("VACUUM (ANALYZE) jobs").execute(&self.pool).await?;
        Ok(())
    }
}
