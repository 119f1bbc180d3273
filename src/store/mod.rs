//! Every SQL statement chatferry runs, in one place.
//!
//! The job table is the source of truth: a job's row says whether its call
//! was made, is in doubt, or is done, and the worker writes that row before
//! and after every provider call. Writes made on behalf of a lane carry the
//! lane's lease (owner + token) and are refused once the lease moved on, so
//! a worker that lost its lane can no longer change it.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::config::DatabaseConfig;
use crate::lane_key::LaneKey;

/// A write to one open job that takes effect only while the writer still
/// holds the job's lane: `$1` is the job and `$2`..`$4` the lease, bound
/// by [`FencedJob::fenced`]. `FOR KEY SHARE` holds the lane's lease still
/// until the write commits, so a worker that lost its lane changes nothing.
macro_rules! fenced {
    ($update:literal $(, $tail:literal)?) => {
        concat!(
            $update,
            "
             WHERE id = $1 AND status IN ('pending', 'in_flight')
               AND lane_id = (SELECT id FROM lanes
                              WHERE id = $2 AND lease_owner = $3 AND lease_token = $4
                              FOR KEY SHARE)",
            $("\n             ", $tail)?
        )
    };
}

pub mod checkpoint;
pub mod dashboard;
mod load;
mod purge;
pub use purge::PurgeCheck;

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The `NOTIFY` channel of live work.
pub const LIVE_CHANNEL: &str = "chatferry_live";
/// A lane's priority while it holds live work: above any `load --priority`.
pub const LIVE_PRIORITY: i32 = 1 << 30;

/// Lock key for `migrate`, so hosts running it at once take turns.
const MIGRATE_LOCK: i64 = 0x6368_6174_6665_7279; // "chatfery"

/// A handle on the database.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    schema: String,
}

/// A lane this worker holds.
#[derive(Debug, Clone)]
pub struct Lease {
    pub lane_id: i64,
    pub owner: Uuid,
    pub token: i64,
}

/// A claimed lane with what the worker needs to run it.
#[derive(Debug, Clone)]
pub struct ClaimedLane {
    pub lease: Lease,
    pub target: String,
    pub lane_key: LaneKey,
    /// The lane held live work when claimed: its calls go first at the
    /// rate limiter.
    pub live: bool,
    /// Set by the worker when live work for this lane arrives while it
    /// runs (a `NOTIFY` naming it): the lane reads its queue again.
    pub news: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Whether a released lane is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Park {
    /// Claimable again when its head job is due.
    No,
    /// Stopped at this failed job (`on_permanent_error = "block"`).
    Blocked(i64),
    /// Its head job's batch is paused.
    Paused(i64),
}

impl Park {
    /// The failed job a parked lane stops at.
    fn blocked_job(self) -> Option<i64> {
        match self {
            Park::Blocked(job) => Some(job),
            _ => None,
        }
    }

    /// The paused batch a parked lane waits for.
    fn paused_batch(self) -> Option<i64> {
        match self {
            Park::Paused(batch) => Some(batch),
            _ => None,
        }
    }
}

/// Status of one job, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, Serialize)]
#[sqlx(type_name = "job_status", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    InFlight,
    Done,
    Failed,
    Skipped,
}

/// An open job at the head of a lane.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpenJob {
    pub id: i64,
    pub source_id: String,
    pub body: String,
    pub status: JobStatus,
    pub attempts: i32,
    /// Milliseconds until the job may be tried again (<= 0: now).
    pub wait_ms: i64,
    pub sent_at_ms: i64,
    pub batch_id: i64,
    /// The job's batch is paused: the lane parks here.
    pub paused: bool,
    /// The job was once in doubt: every attempt reconciles first.
    pub in_doubt: bool,
    /// Reconciles of this job that could not decide.
    pub reconcile_attempts: i32,
    /// The first in-flight mark, Unix ms on the database's clock.
    pub first_mark_ms: Option<i64>,
    /// Milliseconds until the latest mark is `settle` old (<= 0: settled).
    pub settle_wait_ms: i64,
    /// The job belongs to a live batch (paced first).
    pub live: bool,
    /// The lane holds live work now: its history goes first too, so the
    /// live message behind it waits as little as it can.
    pub lane_live: bool,
}

impl OpenJob {
    /// Whether the provider may hold this job already: it must be
    /// reconciled before it is sent again.
    pub fn needs_reconcile(&self) -> bool {
        self.status == JobStatus::InFlight || self.in_doubt
    }
}

/// A lane whose open jobs wait on an operator (`run --exit-when-idle`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StuckLane {
    pub lane_id: i64,
    pub target: String,
    pub conversation: LaneKey,
    pub view_user: Option<String>,
    /// Pending or in-flight jobs left in the lane.
    pub open_jobs: i64,
    /// Why it waits, and what the operator can do.
    pub why: String,
}

/// A lane [`Store::wake_stranded_lanes`] woke, and what it was parked at.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StrandedLane {
    pub lane_id: i64,
    pub target: String,
    pub conversation: LaneKey,
    pub blocked_job: Option<i64>,
    pub paused_batch: Option<i64>,
}

/// One job to insert, as the loader built it.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub lane_key: LaneKey,
    pub conversation: LaneKey,
    pub view_user: Option<String>,
    pub source_id: String,
    pub sent_at_ms: i64,
    pub input_seq: i64,
    pub body: String,
    /// SHA-256 of the parsed source message: the same on every load.
    pub content_hash: Vec<u8>,
    /// Where the message was read: `FILE line N`.
    pub origin: String,
}

/// What one chunk insert did.
#[derive(Debug, Default)]
pub struct Inserted {
    /// Jobs stored for the first time.
    pub new: u64,
    /// The `input_seq` of every message with a job stored for the first
    /// time (the ingest API tells new messages from known ones).
    pub new_seqs: std::collections::HashSet<i64>,
    /// Messages refused: their id is already stored for the conversation
    /// with different content. Nothing of theirs was stored.
    pub conflicts: Vec<Conflict>,
    /// Every lane the chunk's jobs went to.
    pub lanes: Vec<i64>,
}

/// A message whose id is taken by a different message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Conflict {
    /// The refused message's `input_seq`.
    pub input_seq: i64,
    /// Where the stored message came from (`FILE line N`), if known.
    pub first: Option<String>,
}

/// What the provider said, as recorded on a done job.
#[derive(Debug, Clone, Default)]
pub struct ProviderIds {
    pub msg_id: Option<String>,
    pub msg_seq: Option<i64>,
    pub request_id: Option<String>,
}

/// A batch as `load` and the ingest API find or create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Batch {
    pub id: i64,
    /// Created for the ingest API's live messages (else history files).
    pub live: bool,
}

/// A lane holding jobs of a batch (`verify`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchLane {
    pub lane_id: i64,
    pub target: String,
    pub lane_key: LaneKey,
}

/// A done job, as `verify` compares it with what the provider holds.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DoneJob {
    pub source_id: String,
    pub sent_at_ms: i64,
    pub body: String,
}

/// What `claim_lanes` reads back from each lane it leased.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: i64,
    lease_token: i64,
    target: String,
    lane_key: LaneKey,
    priority: i32,
}

/// A job `retry_failed` put back, and its lane.
#[derive(sqlx::FromRow)]
struct RetriedJob {
    lane_id: i64,
    id: i64,
}

/// Binds the job and the lease a [`fenced!`] statement starts with.
trait FencedJob: Sized {
    fn fenced(self, lease: &Lease, job: i64) -> Self;
}

impl<'q> FencedJob for sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    fn fenced(self, lease: &Lease, job: i64) -> Self {
        self.bind(job)
            .bind(lease.lane_id)
            .bind(lease.owner)
            .bind(lease.token)
    }
}

impl<'q, O> FencedJob for sqlx::query::QueryScalar<'q, Postgres, O, sqlx::postgres::PgArguments> {
    fn fenced(self, lease: &Lease, job: i64) -> Self {
        self.bind(job)
            .bind(lease.lane_id)
            .bind(lease.owner)
            .bind(lease.token)
    }
}

/// Progress of one batch (`status`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BatchStatus {
    pub batch: String,
    pub target: String,
    pub total: i64,
    pub pending: i64,
    pub in_flight: i64,
    pub done: i64,
    pub failed: i64,
    pub skipped: i64,
    pub paused: bool,
    /// Jobs finished per second over the last minute.
    pub jobs_per_sec: f64,
    /// Seconds to finish the batch at that rate.
    pub eta_secs: Option<i64>,
    /// `history` or `live`.
    pub mode: String,
    /// `load --priority`: higher batches are claimed first.
    pub priority: i32,
    /// For a live batch: delivery figures (see the `live_progress` view).
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveStats>,
}

/// Delivery of one live batch (`live_progress`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LiveStats {
    #[serde(skip)]
    pub batch: String,
    #[serde(skip)]
    pub target: String,
    /// Calls committed to the batch (a ZIM message visible to both is two).
    pub received: i64,
    /// Calls the provider accepted.
    pub delivered: i64,
    /// Commit to done checkpoint, over the last five minutes.
    pub latency_p50_secs: Option<f64>,
    pub latency_p99_secs: Option<f64>,
    /// Age of the oldest call not yet delivered.
    pub oldest_undelivered_secs: Option<f64>,
}

/// True when a database error is worth waiting out (connection lost, server
/// restarting, pool exhausted) rather than a bug or a bad statement.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // 08: connection exception; 57P0x: admin/crash shutdown, cannot
            // connect now; 53: insufficient resources; 40001/40P01:
            // serialization failure / deadlock (safe to retry); 25006: a
            // write on a server that became a standby (failover).
            let transient = code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "40001"
                || code == "40P01"
                || code == "25006";
            if code == "25006" || code.starts_with("57P") {
                note_failover();
            }
            transient
        }
        _ => false,
    }
}

/// Monotonic ms (since [`epoch`]) of the last sign of a failover.
static FAILOVER_AT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);

fn epoch() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

/// After a failover, pooled connections may still point at the demoted
/// server, which answers every write with 25006 while a ping works: the
/// pool would hand them out for ever. Every connection opened before the
/// last such answer is therefore closed when next acquired (see
/// [`Store::connect`]); new ones reach the new primary.
fn note_failover() {
    let now = epoch().elapsed().as_millis() as i64;
    FAILOVER_AT.fetch_max(now, std::sync::atomic::Ordering::AcqRel);
}

/// True when a pooled connection of this age predates the last failover.
fn predates_failover(age: Duration) -> bool {
    let opened = epoch().elapsed().saturating_sub(age).as_millis() as i64;
    opened <= FAILOVER_AT.load(std::sync::atomic::Ordering::Acquire)
}

/// Locks the row a lane is about to be parked for (its failed job or its
/// paused batch), before the lane itself: the order `retry`, `skip` and
/// `resume` lock in (see [`Store::release_lane`]).
async fn lock_park_reason(tx: &mut sqlx::PgConnection, park: Park) -> Result<(), sqlx::Error> {
    let (sql, id) = match park {
        Park::No => return Ok(()),
        Park::Blocked(job) => ("SELECT 1 FROM jobs WHERE id = $1 FOR SHARE", job),
        Park::Paused(batch) => ("SELECT 1 FROM batches WHERE id = $1 FOR SHARE", batch),
    };
    sqlx::query(sql).bind(id).execute(tx).await?;
    Ok(())
}

impl Store {
    /// Opens a pool whose connections use the configured schema.
    pub async fn connect(cfg: &DatabaseConfig, url: &secrecy::SecretString) -> anyhow::Result<Store> {
        let schema = cfg.schema.clone();
        if schema.is_empty()
            || !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            anyhow::bail!("database.schema {schema:?} must be lowercase letters, digits and '_'");
        }
        let opts = PgConnectOptions::from_str(url.expose_secret())
            .map_err(|_| anyhow::anyhow!("database.url is not a valid postgres:// URL"))?
            // JIT compiles for a second or more whenever the planner's
            // estimate is large (a view over a fresh, unanalyzed table),
            // and no statement here runs long enough to win it back.
            .options([("search_path", schema.as_str()), ("jit", "off")])
            .application_name("chatferry");
        let pool = PgPoolOptions::new()
            .max_connections(cfg.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .before_acquire(|_, meta| Box::pin(async move { Ok(!predates_failover(meta.age)) }))
            .connect_lazy_with(opts);
        Ok(Store { pool, schema })
    }

    /// The underlying pool (tests and the ops endpoint).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }

    /// Creates the schema and applies pending migrations; hosts running this
    /// at once serialize on an advisory lock.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *conn)
            .await?;
        let result = async {
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", self.schema))
                .execute(&mut *conn)
                .await?;
            MIGRATOR.run(&mut *conn).await?;
            anyhow::Ok(())
        }
        .await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *conn)
            .await;
        result
    }

    // ----- loading -------------------------------------------------------

    /// Finds or creates a history batch.
    pub async fn ensure_batch(&self, name: &str, target: &str) -> Result<i64, sqlx::Error> {
        Ok(self.ensure_batch_as(name, target, false, None).await?.id)
    }

    /// Finds or creates a batch of this mode; `priority`, when given, is
    /// set (also on an existing batch). A batch keeps the mode it was
    /// created with, and the caller refuses a mismatch.
    pub async fn ensure_batch_as(
        &self,
        name: &str,
        target: &str,
        live: bool,
        priority: Option<i32>,
    ) -> Result<Batch, sqlx::Error> {
        sqlx::query_as(
            "INSERT INTO batches (name, target, mode, priority)
             VALUES ($1, $2, CASE WHEN $3 THEN 'live' ELSE 'history' END, coalesce($4, 0))
             ON CONFLICT (name, target) DO UPDATE SET priority = coalesce($4, batches.priority)
             RETURNING id, mode = 'live' AS live",
        )
        .bind(name)
        .bind(target)
        .bind(live)
        .bind(priority)
        .fetch_one(&self.pool)
        .await
    }

    /// Wakes whoever waits for live work (`LISTEN` in [`crate::worker`]);
    /// the payload names the lanes, so a worker running one of them reads
    /// its queue again. Past what a notice can carry it names none, and
    /// those lanes see the work at their next read.
    pub async fn notify_live(&self, lanes: &[i64]) -> Result<(), sqlx::Error> {
        let mut payload = String::new();
        for id in lanes {
            if payload.len() > 7000 {
                break;
            }
            if !payload.is_empty() {
                payload.push(',');
            }
            payload.push_str(&id.to_string());
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(LIVE_CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// A base for this load's input order: later loads sort after earlier ones.
    pub async fn next_load_base(&self) -> Result<i64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT nextval('load_seq')")
            .fetch_one(&self.pool)
            .await?;
        Ok(n << 32)
    }

    /// Wakes idle lanes that hold open jobs yet wait on nothing: no lease,
    /// and no pause or block that still holds (a loader that died between
    /// its commit and its wake-up, or a park whose reason an operator
    /// lifted). Returns the lanes woken, with what they were parked at.
    /// Reads every idle lane, so it runs at start-up, every
    /// `worker.sweep_secs` and before an idle exit, never in a hot loop.
    pub async fn wake_stranded_lanes(&self) -> Result<Vec<StrandedLane>, sqlx::Error> {
        sqlx::query_as(
            "WITH s AS (
                SELECT l.id, l.blocked_job, l.paused_batch FROM lanes l
                WHERE l.available_at IS NULL
                  AND (l.blocked_job IS NULL OR NOT EXISTS (
                        SELECT 1 FROM jobs b WHERE b.id = l.blocked_job AND b.status = 'failed'))
                  AND (l.paused_batch IS NULL OR NOT EXISTS (
                        SELECT 1 FROM batches p WHERE p.id = l.paused_batch AND p.paused))
                  AND EXISTS (SELECT 1 FROM jobs j
                              WHERE j.lane_id = l.id AND j.status IN ('pending', 'in_flight'))
                FOR UPDATE OF l SKIP LOCKED)
             UPDATE lanes l SET available_at = now(), blocked_job = NULL, paused_batch = NULL
             FROM s WHERE l.id = s.id
             RETURNING l.id AS lane_id, l.target, l.conversation, s.blocked_job, s.paused_batch",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Lanes of these targets whose open jobs wait on an operator: a
    /// paused batch or a block. Read once, before an idle exit.
    pub async fn stuck_lanes(&self, targets: &[String]) -> Result<Vec<StuckLane>, sqlx::Error> {
        sqlx::query_as(
            "SELECT l.id AS lane_id, l.target, l.conversation, l.view_user,
                    (SELECT count(*) FROM jobs j
                     WHERE j.lane_id = l.id AND j.status IN ('pending', 'in_flight')) AS open_jobs,
                    CASE WHEN l.blocked_job IS NOT NULL THEN
                        format('blocked at job %s (source id %s, code %s: %s); run `chatferry retry --batch %s` or `chatferry skip --job %s`',
                               bj.id, bj.source_id, coalesce(bj.last_code::text, 'none'),
                               coalesce(bj.last_error, ''), bb.name, bj.id)
                    WHEN l.paused_batch IS NOT NULL THEN
                        format('batch %s is paused; run `chatferry resume --batch %s`', pb.name, pb.name)
                    ELSE 'idle with open jobs' END AS why
             FROM lanes l
             LEFT JOIN jobs bj ON bj.id = l.blocked_job
             LEFT JOIN batches bb ON bb.id = bj.batch_id
             LEFT JOIN batches pb ON pb.id = l.paused_batch
             WHERE l.target = ANY($1) AND l.available_at IS NULL
               AND EXISTS (SELECT 1 FROM jobs j
                           WHERE j.lane_id = l.id AND j.status IN ('pending', 'in_flight'))
             ORDER BY l.id",
        )
        .bind(targets)
        .fetch_all(&self.pool)
        .await
    }

    // ----- workers -------------------------------------------------------

    /// Announces a worker process.
    pub async fn register_worker(&self, id: Uuid, host: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO workers (id, host, pid) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(host)
            .bind(std::process::id() as i32)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Removes a worker that is shutting down.
    pub async fn unregister_worker(&self, id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Heartbeats this worker with whether it holds lanes, forgets workers
    /// silent for a minute, and returns how many *other* workers are live
    /// (heartbeat within `live_within`) and active.
    pub async fn worker_heartbeat(
        &self,
        id: Uuid,
        active: bool,
        live_within: Duration,
    ) -> Result<u32, sqlx::Error> {
        sqlx::query("UPDATE workers SET heartbeat_at = now(), active = $2 WHERE id = $1")
            .bind(id)
            .bind(active)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM workers WHERE heartbeat_at < now() - interval '60 seconds'")
            .execute(&self.pool)
            .await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM workers
             WHERE id <> $1 AND active AND heartbeat_at > now() - $2 * interval '1 millisecond'",
        )
        .bind(id)
        .bind(live_within.as_millis() as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u32)
    }

    /// The shared AIMD factor of each target: the factor left by the last
    /// rate-limit answer, recovering by `recover_per_sec` per second since.
    pub async fn rate_factors(&self, recover_per_sec: f64) -> Result<HashMap<String, f64>, sqlx::Error> {
        let factors: Vec<(String, f64)> = sqlx::query_as(
            "SELECT target, least(1.0, factor + $1 * extract(epoch FROM (now() - throttled_at)))::float8
             FROM target_rates WHERE throttled_at > '-infinity'",
        )
        .bind(recover_per_sec)
        .fetch_all(&self.pool)
        .await?;
        Ok(factors.into_iter().collect())
    }

    /// Nudges a target's shared factor down by `nudge` (e.g. 0.97) after a
    /// rate-limit answer (at most once a second, however many replicas saw
    /// it); returns the new factor. The limit is known, so an answer means
    /// a slight overshoot, not a lower capacity: the factor is never halved.
    pub async fn throttle(&self, target: &str, recover_per_sec: f64, nudge: f64) -> Result<f64, sqlx::Error> {
        sqlx::query(
            "INSERT INTO target_rates (target, factor, throttled_at) VALUES ($1, $3, now())
             ON CONFLICT (target) DO UPDATE
                SET factor = greatest(0.05, least(1.0, target_rates.factor
                              + $2 * extract(epoch FROM (now() - target_rates.throttled_at))) * $3),
                    throttled_at = now()
                WHERE target_rates.throttled_at < now() - interval '1 second'",
        )
        .bind(target)
        .bind(recover_per_sec)
        .bind(nudge)
        .execute(&self.pool)
        .await?;
        sqlx::query_scalar("SELECT factor FROM target_rates WHERE target = $1")
            .bind(target)
            .fetch_one(&self.pool)
            .await
    }

    // ----- lanes ---------------------------------------------------------

    /// Claims up to `n` lanes of the given targets whose time has come,
    /// including lanes whose previous lease expired.
    /// `running` are lanes this process still runs: an expired lease of
    /// its own is never claimed twice.
    pub async fn claim_lanes(
        &self,
        owner: Uuid,
        n: i64,
        lease: Duration,
        targets: &[String],
        running: &[i64],
        min_priority: Option<i32>,
    ) -> Result<Vec<ClaimedLane>, sqlx::Error> {
        if n <= 0 || targets.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<ClaimRow> = sqlx::query_as(
            "WITH c AS (
                SELECT id FROM lanes
                WHERE available_at <= now() AND target = ANY($4) AND id <> ALL($5)
                  AND ($6::integer IS NULL OR priority >= $6)
                ORDER BY priority DESC, available_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED
             )
             UPDATE lanes l
                SET lease_owner = $1,
                    lease_token = l.lease_token + 1,
                    lease_until = now() + $3 * interval '1 millisecond',
                    available_at = now() + $3 * interval '1 millisecond'
             FROM c WHERE l.id = c.id
             RETURNING l.id, l.lease_token, l.target, l.lane_key, l.priority",
        )
        .bind(owner)
        .bind(n)
        .bind(lease.as_millis() as i64)
        .bind(targets)
        .bind(running)
        .bind(min_priority)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ClaimedLane {
                lease: Lease {
                    lane_id: r.id,
                    owner,
                    token: r.lease_token,
                },
                target: r.target,
                lane_key: r.lane_key,
                live: r.priority >= LIVE_PRIORITY,
                news: Default::default(),
            })
            .collect())
    }

    /// Renews the leases this worker holds; returns the lane ids still held.
    pub async fn renew_leases(
        &self,
        owner: Uuid,
        lanes: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query("UPDATE workers SET heartbeat_at = now() WHERE id = $1")
            .bind(owner)
            .execute(&self.pool)
            .await?;
        if lanes.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = lanes.iter().map(|l| l.0).collect();
        let tokens: Vec<i64> = lanes.iter().map(|l| l.1).collect();
        sqlx::query_scalar(
            "UPDATE lanes l
                SET lease_until = now() + $2 * interval '1 millisecond',
                    available_at = now() + $2 * interval '1 millisecond'
             FROM unnest($3::bigint[], $4::bigint[]) AS u(id, token)
             WHERE l.id = u.id AND l.lease_token = u.token AND l.lease_owner = $1
             RETURNING l.id",
        )
        .bind(owner)
        .bind(lease.as_millis() as i64)
        .bind(&ids)
        .bind(&tokens)
        .fetch_all(&self.pool)
        .await
    }

    /// Gives a lane back. Its next claim time is its head job's retry time,
    /// or NULL when nothing is left; `park` parks it at a failed job or a
    /// paused batch. Returns false when the lease had already moved on.
    ///
    /// A lane is parked only while its reason still holds, checked under
    /// locks in this transaction: an operator's `resume`, `retry` or `skip`
    /// committed after the worker decided to park would otherwise find the
    /// lane still leased, leave it alone, and the lane would sleep for
    /// ever. The batch or job row is locked before the lane, the order
    /// those commands use, so the two wait for each other and never
    /// deadlock; whichever commits second sees the other's change.
    pub async fn release_lane(&self, lease: &Lease, park: Park) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        lock_park_reason(&mut tx, park).await?;
        // Lock the lane, then read the head in a fresh statement: a loader
        // holding the lane lock has committed its jobs by then.
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM lanes WHERE id = $1 AND lease_owner = $2 AND lease_token = $3 FOR UPDATE",
        )
        .bind(lease.lane_id)
        .bind(lease.owner)
        .bind(lease.token)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "WITH park AS (
                SELECT (SELECT id FROM jobs WHERE id = $2 AND status = 'failed') AS blocked_job,
                       (SELECT id FROM batches WHERE id = $3 AND paused) AS paused_batch)
             UPDATE lanes SET lease_owner = NULL, lease_until = NULL,
                    blocked_job = park.blocked_job, paused_batch = park.paused_batch,
                    priority = CASE WHEN lanes.priority = 0 THEN 0 ELSE coalesce((
                        SELECT max(CASE WHEN b.mode = 'live' THEN $4 ELSE b.priority END)
                        FROM batches b
                        WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.lane_id = $1 AND j.batch_id = b.id
                                      AND j.status IN ('pending', 'in_flight'))), 0) END,
                    available_at = CASE WHEN park.blocked_job IS NULL AND park.paused_batch IS NULL THEN
                        (SELECT next_attempt_at FROM jobs
                         WHERE lane_id = $1 AND status IN ('pending', 'in_flight')
                         ORDER BY sent_at_ms, input_seq LIMIT 1)
                    END
             FROM park
             WHERE id = $1",
        )
        .bind(lease.lane_id)
        .bind(park.blocked_job())
        .bind(park.paused_batch())
        .bind(LIVE_PRIORITY)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// True while any lane of these targets has work now or later (pending,
    /// waiting for a retry, or leased by some worker).
    pub async fn has_open_lanes(&self, targets: &[String]) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM lanes WHERE available_at IS NOT NULL AND target = ANY($1))",
        )
        .bind(targets)
        .fetch_one(&self.pool)
        .await
    }

    /// Milliseconds until the next lane becomes claimable (None: no lane waits).
    pub async fn next_claim_in_ms(&self, targets: &[String]) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT (extract(epoch FROM (min(available_at) - now())) * 1000)::bigint
             FROM lanes WHERE available_at IS NOT NULL AND target = ANY($1)",
        )
        .bind(targets)
        .fetch_one(&self.pool)
        .await
    }

    // ----- jobs ----------------------------------------------------------

    /// The next open jobs of a lane, in lane order. `settle` is how old an
    /// in-doubt job's latest in-flight mark must be before it is reconciled.
    /// `live_first` (a provider that places messages by their time) puts
    /// the lane's live jobs before its history.
    pub async fn open_jobs(
        &self,
        lane_id: i64,
        limit: i64,
        settle: Duration,
        live_first: bool,
    ) -> Result<Vec<OpenJob>, sqlx::Error> {
        sqlx::query_as(
            "SELECT j.id, j.source_id, j.body, j.status, j.attempts,
                    (extract(epoch FROM (j.next_attempt_at - now())) * 1000)::bigint AS wait_ms,
                    j.sent_at_ms, j.batch_id, b.paused, j.in_doubt, j.reconcile_attempts,
                    (extract(epoch FROM j.first_in_flight_at) * 1000)::bigint AS first_mark_ms,
                    coalesce((extract(epoch FROM (j.in_flight_at + $3 * interval '1 millisecond' - now()))
                              * 1000)::bigint, 0) AS settle_wait_ms,
                    b.mode = 'live' AS live,
                    (SELECT priority FROM lanes WHERE id = $1) >= $5 AS lane_live
             FROM jobs j JOIN batches b ON b.id = j.batch_id
             WHERE j.lane_id = $1 AND j.status IN ('pending', 'in_flight')
             ORDER BY $4 AND b.mode = 'live' DESC, j.sent_at_ms, j.input_seq
             LIMIT $2",
        )
        .bind(lane_id)
        .bind(limit)
        .bind(settle.as_millis() as i64)
        .bind(live_first)
        .bind(LIVE_PRIORITY)
        .fetch_all(&self.pool)
        .await
    }

    /// Holds an in-doubt job until `wait` has passed (its settle time),
    /// keeping its status; false when the lease moved on.
    pub async fn defer_job(&self, lease: &Lease, job_id: i64, wait: Duration) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(fenced!(
            "UPDATE jobs SET next_attempt_at = greatest(next_attempt_at, now() + $5 * interval '1 millisecond')"
        ))
        .fenced(lease, job_id)
        .bind(wait.as_millis() as i64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Counts a reconcile that could not decide and schedules the next one;
    /// returns the reconcile attempts so far, None when the lease moved on.
    pub async fn record_reconcile_unknown(
        &self,
        lease: &Lease,
        job_id: i64,
        error: &str,
        delay: Duration,
    ) -> Result<Option<i32>, sqlx::Error> {
        sqlx::query_scalar(fenced!(
            "UPDATE jobs SET reconcile_attempts = reconcile_attempts + 1, in_doubt = true,
                    last_code = NULL, last_error = $5, updated_at = now(),
                    next_attempt_at = now() + $6 * interval '1 millisecond'",
            "RETURNING reconcile_attempts"
        ))
        .fenced(lease, job_id)
        .bind(error)
        .bind(delay.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await
    }

    /// What `chatferry probe` stored for a target.
    pub async fn probe_findings(&self, target: &str) -> Result<Option<serde_json::Value>, sqlx::Error> {
        sqlx::query_scalar("SELECT findings FROM probe_findings WHERE target = $1")
            .bind(target)
            .fetch_optional(&self.pool)
            .await
    }

    /// Stores (replaces) a target's probe findings.
    pub async fn save_probe_findings(
        &self,
        target: &str,
        findings: &serde_json::Value,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO probe_findings (target, findings) VALUES ($1, $2)
             ON CONFLICT (target) DO UPDATE SET findings = EXCLUDED.findings, probed_at = now()",
        )
        .bind(target)
        .bind(findings)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Provider message ids already recorded in a lane, newest first.
    pub async fn recent_msg_ids(&self, lane_id: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT provider_msg_id FROM jobs
             WHERE lane_id = $1 AND status = 'done' AND provider_msg_id IS NOT NULL
             ORDER BY sent_at_ms DESC, input_seq DESC LIMIT $2",
        )
        .bind(lane_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Schedules another attempt. `in_doubt` keeps the job in_flight so the
    /// next attempt reconciles before it resends.
    pub async fn record_retry(
        &self,
        lease: &Lease,
        job_id: i64,
        code: Option<i64>,
        error: &str,
        delay: Duration,
        in_doubt: bool,
    ) -> Result<bool, sqlx::Error> {
        record_retry(&self.pool, lease, job_id, code, error, delay, in_doubt).await
    }

    /// Ends a job as failed (or skipped) with its code and reason.
    pub async fn record_final(
        &self,
        lease: &Lease,
        job_id: i64,
        status: JobStatus,
        code: Option<i64>,
        error: &str,
    ) -> Result<bool, sqlx::Error> {
        record_final(&self.pool, lease, job_id, status, code, error).await
    }

    // ----- operators -----------------------------------------------------

    /// Pauses or resumes a batch (every target it was loaded for). Pausing
    /// parks the unleased lanes holding its open jobs; leased lanes park
    /// at their next job. Resuming wakes them. Returns the batches touched.
    pub async fn set_paused(&self, batch: &str, paused: bool) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<i64> = sqlx::query_scalar("UPDATE batches SET paused = $2 WHERE name = $1 RETURNING id")
            .bind(batch)
            .bind(paused)
            .fetch_all(&mut *tx)
            .await?;
        if paused {
            sqlx::query(
                "UPDATE lanes l SET available_at = NULL, paused_batch = j.batch_id
                 FROM (SELECT DISTINCT lane_id, batch_id FROM jobs
                       WHERE batch_id = ANY($1) AND status IN ('pending', 'in_flight')) j
                 WHERE l.id = j.lane_id AND l.lease_owner IS NULL AND l.blocked_job IS NULL
                   AND l.paused_batch IS NULL",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "UPDATE lanes SET paused_batch = NULL,
                        available_at = CASE WHEN blocked_job IS NULL THEN now() END
                 WHERE paused_batch = ANY($1)",
            )
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    /// Puts a batch's failed jobs (optionally of one code) back to pending
    /// and wakes their lanes, unblocking lanes parked at them.
    pub async fn retry_failed(&self, batch: &str, code: Option<i64>) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let retried: Vec<RetriedJob> = sqlx::query_as(
            "UPDATE jobs j SET status = 'pending', next_attempt_at = now(), updated_at = now(),
                    finished_at = NULL
             FROM batches b
             WHERE b.id = j.batch_id AND b.name = $1 AND j.status = 'failed'
               AND ($2::bigint IS NULL OR j.last_code = $2)
             RETURNING j.lane_id, j.id",
        )
        .bind(batch)
        .bind(code)
        .fetch_all(&mut *tx)
        .await?;
        let lane_ids: Vec<i64> = retried.iter().map(|r| r.lane_id).collect();
        let job_ids: Vec<i64> = retried.iter().map(|r| r.id).collect();
        sqlx::query(
            "UPDATE lanes SET blocked_job = CASE WHEN blocked_job = ANY($2) THEN NULL ELSE blocked_job END,
                    available_at = CASE WHEN lease_owner IS NULL AND paused_batch IS NULL
                                         AND (blocked_job IS NULL OR blocked_job = ANY($2))
                                        THEN now() ELSE available_at END
             WHERE id = ANY($1)",
        )
        .bind(&lane_ids)
        .bind(&job_ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(job_ids.len() as u64)
    }

    /// Marks one job skipped (it will not be sent); unblocks its lane if
    /// the lane was parked at it. Returns the job's previous status.
    pub async fn skip_job(&self, job_id: i64) -> Result<Option<JobStatus>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let prev: Option<JobStatus> = sqlx::query_scalar(
            "WITH old AS (SELECT id, status FROM jobs WHERE id = $1 FOR UPDATE)
             UPDATE jobs j SET status = 'skipped', finished_at = now(), updated_at = now(),
                    last_error = coalesce(j.last_error || '; ', '') || 'skipped by an operator'
             FROM old WHERE j.id = old.id AND old.status IN ('pending', 'in_flight', 'failed')
             RETURNING old.status",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        if prev.is_some() {
            sqlx::query(
                "UPDATE lanes SET blocked_job = NULL,
                        available_at = CASE WHEN paused_batch IS NULL THEN now() END
                 WHERE blocked_job = $1 AND lease_owner IS NULL",
            )
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(prev)
    }

    /// Every user id in the conversations of a target (optionally of one batch).
    pub async fn users(&self, target: &str, batch: Option<&str>) -> Result<Vec<String>, sqlx::Error> {
        let convs: Vec<LaneKey> = sqlx::query_scalar(
            "SELECT DISTINCT l.conversation FROM lanes l
             WHERE l.target = $1
               AND ($2::text IS NULL OR EXISTS (
                    SELECT 1 FROM jobs j JOIN batches b ON b.id = j.batch_id
                    WHERE j.lane_id = l.id AND b.name = $2))",
        )
        .bind(target)
        .bind(batch)
        .fetch_all(&self.pool)
        .await?;
        let mut users: Vec<String> = Vec::with_capacity(convs.len() * 2);
        for c in &convs {
            match c.users() {
                Some((a, b)) => users.extend([a.to_string(), b.to_string()]),
                None => users.push(c.as_str().to_string()),
            }
        }
        users.sort_unstable();
        users.dedup();
        Ok(users)
    }

    /// The lanes holding jobs of a batch, by id.
    pub async fn batch_lanes(&self, batch: &str) -> Result<Vec<BatchLane>, sqlx::Error> {
        sqlx::query_as(
            "SELECT DISTINCT l.id AS lane_id, l.target, l.lane_key FROM lanes l
             JOIN jobs j ON j.lane_id = l.id JOIN batches b ON b.id = j.batch_id
             WHERE b.name = $1 ORDER BY lane_id",
        )
        .bind(batch)
        .fetch_all(&self.pool)
        .await
    }

    /// A lane's done jobs in lane order.
    pub async fn lane_done(&self, lane_id: i64) -> Result<Vec<DoneJob>, sqlx::Error> {
        sqlx::query_as(
            "SELECT source_id, sent_at_ms, body FROM jobs
             WHERE lane_id = $1 AND status = 'done' ORDER BY sent_at_ms, input_seq",
        )
        .bind(lane_id)
        .fetch_all(&self.pool)
        .await
    }

    // ----- progress ------------------------------------------------------

    /// Jobs per status over all batches (the backlog gauge).
    pub async fn backlog(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        // From the counters (migration 0007): constant time at any size.
        // Every status, zeros too, so a gauge falls to 0 when its last
        // job leaves instead of keeping its last value.
        sqlx::query_as(
            "SELECT s::text, coalesce(sum(c.n), 0)::bigint
             FROM unnest(enum_range(NULL::job_status)) AS s LEFT JOIN job_counts c ON c.status = s
             GROUP BY s ORDER BY s",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Progress per batch, optionally of one batch name.
    pub async fn status(&self, batch: Option<&str>) -> Result<Vec<BatchStatus>, sqlx::Error> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT p.batch, p.target, p.total, p.pending, p.in_flight, p.done, p.failed, p.skipped,
                    p.paused, p.jobs_per_sec::float8 AS jobs_per_sec,
                    CASE WHEN p.pending + p.in_flight > 0 THEN extract(epoch FROM p.eta)::bigint END AS eta_secs,
                    b.mode, b.priority
             FROM batch_progress p JOIN batches b ON b.name = p.batch AND b.target = p.target",
        );
        if let Some(b) = batch {
            q.push(" WHERE p.batch = ").push_bind(b);
        }
        q.push(" ORDER BY p.batch, p.target");
        let mut rows: Vec<BatchStatus> = q.build_query_as().fetch_all(&self.pool).await?;
        if rows.iter().any(|r| r.mode == "live") {
            for l in self.live_progress().await? {
                if let Some(r) = rows
                    .iter_mut()
                    .find(|r| r.batch == l.batch && r.target == l.target)
                {
                    r.live = Some(l);
                }
            }
        }
        Ok(rows)
    }

    /// Delivery figures of every live batch.
    pub async fn live_progress(&self) -> Result<Vec<LiveStats>, sqlx::Error> {
        sqlx::query_as(
            "SELECT batch, target, received, delivered, latency_p50_secs, latency_p99_secs,
                    oldest_undelivered_secs::float8 AS oldest_undelivered_secs
             FROM live_progress ORDER BY batch, target",
        )
        .fetch_all(&self.pool)
        .await
    }
}

/// [`Store::record_retry`] on any executor (`checkpoint` runs it in a
/// transaction of its own).
pub(crate) async fn record_retry<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    lease: &Lease,
    job_id: i64,
    code: Option<i64>,
    error: &str,
    delay: Duration,
    in_doubt: bool,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(fenced!(
        "UPDATE jobs SET status = CASE WHEN $7 THEN 'in_flight'::job_status ELSE 'pending' END,
                in_doubt = in_doubt OR $7, last_code = $5, last_error = $6, updated_at = now(),
                next_attempt_at = now() + $8 * interval '1 millisecond'"
    ))
    .fenced(lease, job_id)
    .bind(code)
    .bind(error)
    .bind(in_doubt)
    .bind(delay.as_millis() as i64)
    .execute(ex)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// [`Store::record_final`] on any executor (`checkpoint` runs it in a
/// transaction of its own).
pub(crate) async fn record_final<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    lease: &Lease,
    job_id: i64,
    status: JobStatus,
    code: Option<i64>,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(fenced!(
        "UPDATE jobs SET status = $5, last_code = $6, last_error = $7,
                updated_at = now(), finished_at = now()"
    ))
    .fenced(lease, job_id)
    .bind(status)
    .bind(code)
    .bind(error)
    .execute(ex)
    .await?
    .rows_affected();
    Ok(n == 1)
}
