//! Writing the loader's chunks. A first load `COPY`s a chunk straight
//! into `jobs` (`copy_direct`); when any of its ids is stored already or
//! comes twice, that is undone to a savepoint and the chunk goes the
//! careful way: `COPY` into a per-connection staging table, then one
//! set-based insert into `jobs`.
//!
//! `COPY` is the fastest way into Postgres (one stream, no parameter
//! limits, no per-row statement), and the set-based insert keeps what made
//! loading safe: `ON CONFLICT (lane_id, source_id) DO NOTHING` makes a
//! reload a no-op, and a reused id with other content is found by a join
//! of the staged rows against what is stored.

use std::collections::{BTreeMap, HashMap};

use super::{Conflict, Inserted, NewJob, Store};
use crate::lane_key::LaneKey;

/// The staging table lives in `pg_temp` (per connection, never
/// WAL-logged) and empties at every commit or rollback.
/// Quiets the "already exists" notice of the staging table.
const QUIET: &str = "SET LOCAL client_min_messages = warning";
const STAGE: &str = "CREATE TEMP TABLE IF NOT EXISTS load_stage (
        lane_id bigint, source_id text, sent_at_ms bigint, input_seq bigint,
        body text, content_hash bytea, origin text
    ) ON COMMIT DELETE ROWS";

impl Store {
    /// Inserts one chunk of jobs in one transaction; returns how many were
    /// new and which messages were refused as reused ids.
    ///
    /// Waking the chunk's idle lanes happens after the commit, on purpose:
    /// a worker releasing a lane locks it and then reads its head in a new
    /// statement. If that read missed our jobs, the release sets the lane
    /// idle (NULL) and our wake-up, which runs after our commit, either
    /// waits for that release's lock or sees its NULL, and wakes the lane.
    /// Had we woken the lane inside the transaction, a release between our
    /// wake-up and our commit would put it to sleep with work in it. A
    /// loader killed between commit and wake-up leaves lanes stranded;
    /// [`Store::wake_stranded_lanes`] finds them.
    pub async fn insert_jobs(
        &self,
        target: &str,
        batch_id: i64,
        jobs: &[NewJob],
    ) -> Result<Inserted, sqlx::Error> {
        if jobs.is_empty() {
            return Ok(Inserted::default());
        }
        let mut tx = self.pool.begin().await?;
        let ids = upsert_lanes(&mut tx, target, jobs).await?;
        let inserted = match copy_direct(&mut tx, batch_id, jobs, &ids).await? {
            Some(inserted) => inserted,
            None => {
                // Two prepared statements, not `raw_sql`: its future is not
                // `Send`, and the ingest API awaits this inside an axum handler.
                sqlx::query(QUIET).execute(&mut *tx).await?;
                sqlx::query(STAGE).execute(&mut *tx).await?;
                let columns = "lane_id, source_id, sent_at_ms, input_seq, body, content_hash, origin";
                let mut copy = tx
                    .copy_in_raw(&format!("COPY load_stage ({columns}) FROM STDIN"))
                    .await?;
                copy.send(copy_rows(jobs, &ids, None)).await?;
                copy.finish().await?;
                insert_staged(&mut tx, batch_id, jobs.len() as u64).await?
            }
        };
        tx.commit().await?;

        let mut distinct: Vec<i64> = ids.into_values().collect();
        distinct.sort_unstable();
        distinct.dedup();
        // The wake-up also raises the lanes to the batch's priority (a
        // live batch: LIVE_PRIORITY), and only touches lanes that need
        // either, so a plain load writes no more than that.
        let woken = sqlx::query(
            "UPDATE lanes l SET priority = greatest(l.priority, p.prio),
                    available_at = CASE WHEN l.available_at IS NULL AND l.blocked_job IS NULL
                                             AND l.paused_batch IS NULL
                                        THEN now() ELSE l.available_at END
             FROM (SELECT CASE WHEN mode = 'live' THEN $3 ELSE priority END AS prio
                   FROM batches WHERE id = $2) p
             WHERE l.id = ANY($1)
               AND ((l.available_at IS NULL AND l.blocked_job IS NULL AND l.paused_batch IS NULL)
                    OR l.priority < p.prio)",
        )
        .bind(&distinct)
        .bind(batch_id)
        .bind(super::LIVE_PRIORITY)
        .execute(&self.pool)
        .await;
        // The jobs are committed: a failed wake-up must not report them
        // as not stored (a caller would post or load them again and count
        // them as known). The sweep (`wake_stranded_lanes`) wakes them.
        if let Err(e) = woken {
            tracing::warn!(error = %e, lanes = distinct.len(), "jobs stored; their lanes wait for the sweep to wake them");
        }
        Ok(Inserted {
            lanes: distinct,
            ..inserted
        })
    }
}

/// A lane's id by its key.
#[derive(sqlx::FromRow)]
struct LaneId {
    id: i64,
    lane_key: LaneKey,
}

/// Creates the chunk's missing lanes and returns the id of every lane of
/// the chunk by its key.
async fn upsert_lanes(
    tx: &mut sqlx::PgConnection,
    target: &str,
    jobs: &[NewJob],
) -> Result<HashMap<LaneKey, i64>, sqlx::Error> {
    // One job per lane, in key order, so concurrent loads lock them alike.
    let mut lanes: BTreeMap<&LaneKey, &NewJob> = BTreeMap::new();
    for j in jobs {
        lanes.entry(&j.lane_key).or_insert(j);
    }
    let keys: Vec<&str> = lanes.keys().map(|k| k.as_str()).collect();
    let convs: Vec<&str> = lanes.values().map(|j| j.conversation.as_str()).collect();
    let views: Vec<Option<&str>> = lanes.values().map(|j| j.view_user.as_deref()).collect();
    sqlx::query(
        "INSERT INTO lanes (target, lane_key, conversation, view_user, available_at)
         SELECT $1, k, c, v, now()
         FROM unnest($2::text[], $3::text[], $4::text[]) AS u(k, c, v)
         ORDER BY k
         ON CONFLICT (target, lane_key) DO NOTHING",
    )
    .bind(target)
    .bind(&keys)
    .bind(&convs)
    .bind(&views)
    .execute(&mut *tx)
    .await?;
    // Ids by key through the unique index: a join of the staged rows with
    // `lanes` could hash every lane of the target.
    let rows: Vec<LaneId> =
        sqlx::query_as("SELECT id, lane_key FROM lanes WHERE target = $1 AND lane_key = ANY($2)")
            .bind(target)
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await?;
    Ok(rows.into_iter().map(|r| (r.lane_key, r.id)).collect())
}

/// The fast path of a first load: the chunk `COPY`ed straight into
/// `jobs`, which works when none of its ids is stored yet and no id comes
/// twice in it (the usual first load: every row new). Any unique-key
/// violation undoes it to a savepoint, and None sends the chunk the
/// careful way (staging, `ON CONFLICT`, the reused-id check): a reload,
/// an id repeated in the file, or a concurrent loader of the same lanes.
async fn copy_direct(
    tx: &mut sqlx::PgConnection,
    batch_id: i64,
    jobs: &[NewJob],
    ids: &HashMap<LaneKey, i64>,
) -> Result<Option<Inserted>, sqlx::Error> {
    sqlx::query("SAVEPOINT load_direct").execute(&mut *tx).await?;
    let copied = async {
        let mut copy = tx
            .copy_in_raw(
                "COPY jobs (batch_id, lane_id, source_id, sent_at_ms, input_seq, body, content_hash, origin) \
                 FROM STDIN",
            )
            .await?;
        copy.send(copy_rows(jobs, ids, Some(batch_id))).await?;
        copy.finish().await
    }
    .await;
    match copied {
        Ok(n) => {
            sqlx::query("RELEASE SAVEPOINT load_direct")
                .execute(&mut *tx)
                .await?;
            Ok(Some(Inserted {
                new: n,
                new_seqs: jobs.iter().map(|j| j.input_seq).collect(),
                conflicts: Vec::new(),
                lanes: Vec::new(),
            }))
        }
        Err(e) if is_unique_violation(&e) => {
            sqlx::query("ROLLBACK TO SAVEPOINT load_direct")
                .execute(&mut *tx)
                .await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Postgres 23505: a row's key is stored already.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505")
}

/// Moves the staged rows into `jobs`, then refuses (removes again) every
/// message whose id is already stored in its lane with another content
/// hash. A row is ours when its `input_seq` is: every load takes its own
/// range. Concurrent chunks see each other through the unique index: the
/// later insert waits for the earlier commit, then compares. Input order
/// decides which of two lines with one id in a chunk is stored first.
async fn insert_staged(
    tx: &mut sqlx::PgConnection,
    batch_id: i64,
    staged: u64,
) -> Result<Inserted, sqlx::Error> {
    let new_rows: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (lane_id, batch_id, source_id, sent_at_ms, input_seq, body, content_hash, origin)
         SELECT s.lane_id, $1, s.source_id, s.sent_at_ms, s.input_seq, s.body, s.content_hash, s.origin
         FROM load_stage s
         ORDER BY s.input_seq
         ON CONFLICT (lane_id, source_id) DO NOTHING
         RETURNING input_seq",
    )
    .bind(batch_id)
    .fetch_all(&mut *tx)
    .await?;
    let inserted = new_rows.len() as u64;
    let mut new_seqs: std::collections::HashSet<i64> = new_rows.into_iter().collect();
    if inserted == staged {
        // Every row is new, so none can collide (the usual first load).
        return Ok(Inserted {
            new: inserted,
            new_seqs,
            conflicts: Vec::new(),
            lanes: Vec::new(),
        });
    }
    let conflicts: Vec<Conflict> = sqlx::query_as(
        "SELECT DISTINCT ON (s.input_seq) s.input_seq, j.origin AS first
         FROM load_stage s JOIN jobs j ON j.lane_id = s.lane_id AND j.source_id = s.source_id
         WHERE j.input_seq <> s.input_seq AND j.content_hash <> s.content_hash
         ORDER BY s.input_seq",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut removed = 0;
    if !conflicts.is_empty() {
        let refused: Vec<i64> = conflicts.iter().map(|c| c.input_seq).collect();
        removed = sqlx::query(
            "DELETE FROM jobs j USING load_stage s
             WHERE j.lane_id = s.lane_id AND j.source_id = s.source_id AND j.input_seq = s.input_seq
               AND s.input_seq = ANY($1)",
        )
        .bind(&refused)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    for c in &conflicts {
        new_seqs.remove(&c.input_seq);
    }
    Ok(Inserted {
        new: inserted - removed,
        new_seqs,
        conflicts,
        lanes: Vec::new(),
    })
}

/// The chunk in `COPY`'s text format: tab-separated columns, one row a
/// line, bytea as `\x` hex.
/// With `batch`, each row starts with the batch id (the direct path's
/// first column).
fn copy_rows(jobs: &[NewJob], lane_ids: &HashMap<LaneKey, i64>, batch: Option<i64>) -> Vec<u8> {
    use std::io::Write;
    let size: usize = jobs
        .iter()
        .map(|j| j.body.len() + j.source_id.len() + j.origin.len() + 140)
        .sum();
    let mut out = Vec::with_capacity(size);
    for j in jobs {
        if let Some(batch) = batch {
            let _ = write!(out, "{batch}\t");
        }
        let _ = write!(out, "{}\t", lane_ids[&j.lane_key]);
        copy_text(&mut out, &j.source_id);
        let _ = write!(out, "\t{}\t{}\t", j.sent_at_ms, j.input_seq);
        copy_text(&mut out, &j.body);
        out.extend_from_slice(b"\t\\\\x");
        for b in &j.content_hash {
            let _ = write!(out, "{b:02x}");
        }
        out.push(b'\t');
        copy_text(&mut out, &j.origin);
        out.push(b'\n');
    }
    out
}

/// Escapes a value for `COPY ... FROM STDIN` text format: backslash and
/// the separators are the only bytes it treats specially.
fn copy_text(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_separators_and_backslashes() {
        let mut out = Vec::new();
        copy_text(&mut out, "a\tb\nc\\d\re");
        assert_eq!(out, b"a\\tb\\nc\\\\d\\re");
    }
}
