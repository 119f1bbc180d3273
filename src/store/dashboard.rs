//! Read-only queries behind the dashboard (`GET /api/status`) and the
//! alerting gauges. Kept apart from the worker's statements: nothing here
//! takes a lock or writes. The job table holds every message of a
//! migration, so each query goes batch by batch (`JOIN LATERAL`) through
//! an index on `(batch_id, status)` or `(batch_id, finished_at)` and reads
//! only the rows it reports (the last hour, the failed, the in-flight),
//! never the whole table.

use serde::Serialize;
use sqlx::FromRow;

use super::Store;
use crate::lane_key::LaneKey;

/// Rows listed per section; the counts cover everything.
const LIST_LIMIT: i64 = 20;

/// Jobs a target finished as done in one minute.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct MinuteCount {
    pub target: String,
    /// The minute's start, Unix seconds.
    pub minute: i64,
    pub done: i64,
}

/// Failed jobs of a batch sharing a provider code.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct FailureGroup {
    pub batch: String,
    pub target: String,
    pub code: Option<i64>,
    pub count: i64,
    pub example: Option<String>,
}

/// A job whose call left but whose answer was never recorded.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct InDoubtJob {
    pub job: i64,
    pub batch: String,
    pub target: String,
    pub conversation: LaneKey,
    pub view_user: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub since_secs: f64,
}

/// A lane parked by `on_permanent_error = "block"`, with the job that stopped it.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct BlockedLane {
    pub lane: i64,
    pub target: String,
    pub conversation: LaneKey,
    pub view_user: Option<String>,
    pub job: i64,
    pub code: Option<i64>,
    pub reason: Option<String>,
}

/// Lanes parked because their batch is paused.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct PausedLanes {
    pub batch: String,
    pub target: String,
    pub lanes: i64,
}

/// One row of the `workers` table.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub active: bool,
    pub silent_secs: f64,
    pub up_secs: f64,
}

/// The figures the alerts watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertCounts {
    /// Jobs whose call left but whose answer was never recorded.
    pub in_doubt: i64,
    /// Lanes parked at a failed job.
    pub blocked: i64,
}

/// Everything the dashboard shows besides the batch table.
#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    pub throughput: Vec<MinuteCount>,
    pub failures: Vec<FailureGroup>,
    pub in_doubt_total: i64,
    pub in_doubt: Vec<InDoubtJob>,
    pub blocked_total: i64,
    pub blocked: Vec<BlockedLane>,
    pub paused: Vec<PausedLanes>,
    pub workers: Vec<WorkerRow>,
}

/// A job `in_flight` counts as in doubt once nobody holds its lane (the
/// worker died or lost the lease) or its mark is older than any request
/// could be: a call still on the wire is just in flight.
/// `j` are a batch's in-flight jobs (see [`IN_FLIGHT`]), `l` their lanes.
const IN_DOUBT: &str =
    "(l.lease_until IS NULL OR l.lease_until < now() OR j.updated_at < now() - interval '1 minute')";
/// Every batch's in-flight jobs, batch by batch through `(batch_id, status)`.
const IN_FLIGHT: &str = "batches b
     JOIN LATERAL (SELECT id, lane_id, attempts, last_error, updated_at FROM jobs
                   WHERE batch_id = b.id AND status = 'in_flight') j ON true
     JOIN lanes l ON l.id = j.lane_id";

impl Store {
    /// The dashboard's sections, read in one go.
    pub async fn dashboard(&self) -> Result<Dashboard, sqlx::Error> {
        let alerts = self.alert_counts().await?;
        Ok(Dashboard {
            throughput: self.throughput_last_hour().await?,
            failures: self.failure_groups().await?,
            in_doubt_total: alerts.in_doubt,
            in_doubt: self.in_doubt_jobs().await?,
            blocked_total: alerts.blocked,
            blocked: self.blocked_lanes().await?,
            paused: self.paused_lanes().await?,
            workers: self.worker_rows().await?,
        })
    }

    /// Done jobs per target and minute over the last hour.
    pub async fn throughput_last_hour(&self) -> Result<Vec<MinuteCount>, sqlx::Error> {
        // From the per-minute counters (migration 0007): a few hundred
        // rows, however many jobs finished.
        sqlx::query_as(
            "SELECT b.target, extract(epoch FROM m.minute)::bigint AS minute, sum(m.n)::bigint AS done
             FROM job_done_minutes m JOIN batches b ON b.id = m.batch_id
             WHERE m.minute > date_trunc('minute', now() - interval '1 hour')
             GROUP BY 1, 2 HAVING sum(m.n) > 0 ORDER BY 2, 1",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Failures by batch and code, most frequent first, with one reason.
    pub async fn failure_groups(&self) -> Result<Vec<FailureGroup>, sqlx::Error> {
        sqlx::query_as(
            "SELECT b.name AS batch, b.target, j.last_code AS code, count(*) AS count,
                    min(j.last_error) AS example
             FROM batches b
             JOIN LATERAL (SELECT last_code, last_error FROM jobs
                           WHERE batch_id = b.id AND status = 'failed') j ON true
             GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 3 LIMIT 50",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Jobs in doubt and blocked lanes: the figures the alerts watch.
    pub async fn alert_counts(&self) -> Result<AlertCounts, sqlx::Error> {
        let in_doubt: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {IN_FLIGHT} WHERE {IN_DOUBT}"))
            .fetch_one(&self.pool)
            .await?;
        let blocked: i64 = sqlx::query_scalar("SELECT count(*) FROM lanes WHERE blocked_job IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(AlertCounts { in_doubt, blocked })
    }

    async fn in_doubt_jobs(&self) -> Result<Vec<InDoubtJob>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT j.id AS job, b.name AS batch, b.target, l.conversation, l.view_user, j.attempts,
                    j.last_error, extract(epoch FROM now() - j.updated_at)::float8 AS since_secs
             FROM {IN_FLIGHT} WHERE {IN_DOUBT} ORDER BY j.updated_at LIMIT $1"
        ))
        .bind(LIST_LIMIT)
        .fetch_all(&self.pool)
        .await
    }

    async fn blocked_lanes(&self) -> Result<Vec<BlockedLane>, sqlx::Error> {
        sqlx::query_as(
            "SELECT l.id AS lane, l.target, l.conversation, l.view_user, j.id AS job,
                    j.last_code AS code, j.last_error AS reason
             FROM lanes l JOIN jobs j ON j.id = l.blocked_job ORDER BY l.id LIMIT $1",
        )
        .bind(LIST_LIMIT)
        .fetch_all(&self.pool)
        .await
    }

    async fn paused_lanes(&self) -> Result<Vec<PausedLanes>, sqlx::Error> {
        sqlx::query_as(
            "SELECT b.name AS batch, b.target, count(*) AS lanes
             FROM lanes l JOIN batches b ON b.id = l.paused_batch
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Every registered worker with how long it has been silent.
    pub async fn worker_rows(&self) -> Result<Vec<WorkerRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id::text AS id, host, pid, active,
                    extract(epoch FROM now() - heartbeat_at)::float8 AS silent_secs,
                    extract(epoch FROM now() - started_at)::float8 AS up_secs
             FROM workers ORDER BY started_at",
        )
        .fetch_all(&self.pool)
        .await
    }
}
