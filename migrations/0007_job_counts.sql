-- Progress at scale (issue 14). `status`, `batch_progress` and the backlog
-- gauge used to count every job; now they sum `job_counts`, which the
-- triggers below keep up to date in the same transaction as every insert,
-- status change and delete of a job, whoever writes it (loader, worker
-- checkpoints, retry, skip, purge).
--
-- Why append-only deltas and not one counter row per (batch, status):
-- 64+ lanes commit status changes at once, and an UPDATE of a shared row
-- makes each wait for the one before it to commit (and, with several rows
-- per transaction, can deadlock). An INSERT of a delta row never waits on
-- anyone. A reader sums the rows of a batch; now and then a writer folds
-- the deltas into one row per (batch, status) (job_counts_compact), so
-- the table stays small.
CREATE TABLE job_counts (
    batch_id  bigint     NOT NULL,
    status    job_status NOT NULL,
    n         bigint     NOT NULL
);
-- No index: compaction keeps the table at a few rows per batch and
-- status plus recent deltas, read whole; an index would be one more write
-- per status change.

-- Jobs done per batch and minute (of finished_at), the dashboard's
-- throughput chart: the same deltas, so the chart reads a few hundred
-- rows instead of every job done in the last hour. Minutes older than two
-- hours are dropped at compaction.
CREATE TABLE job_done_minutes (
    batch_id  bigint      NOT NULL,
    minute    timestamptz NOT NULL,
    n         bigint      NOT NULL
);
CREATE INDEX job_done_minutes_minute ON job_done_minutes (minute);

-- Every function keeps the schema it was created in (SET search_path FROM
-- CURRENT): the triggers fire for any session that writes jobs, such as
-- an operator's psql with the default search_path.

-- Folds every committed delta into one row per (batch, status). One
-- compaction at a time (the others skip); rows committed after this
-- statement's snapshot are neither deleted nor counted, so a concurrent
-- writer's delta is never lost. The lock key is this table's oid, so
-- schemas sharing a database do not skip each other.
CREATE FUNCTION job_counts_compact() RETURNS void LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    IF pg_try_advisory_xact_lock('job_counts'::regclass::oid::bigint) THEN
        WITH gone AS (DELETE FROM job_counts RETURNING batch_id, status, n)
        INSERT INTO job_counts (batch_id, status, n)
        SELECT batch_id, status, sum(n) FROM gone GROUP BY 1, 2 HAVING sum(n) <> 0;
        WITH gone AS (DELETE FROM job_done_minutes RETURNING batch_id, minute, n)
        INSERT INTO job_done_minutes (batch_id, minute, n)
        SELECT batch_id, minute, sum(n) FROM gone WHERE minute > now() - interval '2 hours'
        GROUP BY 1, 2 HAVING sum(n) <> 0;
    END IF;
END $$;

-- One statement in 256 also compacts: the delta rows stay in the low
-- thousands whatever the rate, at the cost of one short fold.
CREATE FUNCTION job_counts_maybe_compact() RETURNS void LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    IF random() < 1.0 / 256 THEN
        PERFORM job_counts_compact();
    END IF;
END $$;

CREATE FUNCTION job_counts_on_insert() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts (batch_id, status, n)
    SELECT batch_id, status, count(*) FROM new_rows GROUP BY 1, 2;
    PERFORM job_counts_maybe_compact();
    RETURN NULL;
END $$;

-- Statement-level with transition tables: one delta insert per statement
-- however many rows it changes, and none when no status changed (a
-- deferral, a reconcile note).
CREATE FUNCTION job_counts_on_update() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts (batch_id, status, n)
    SELECT batch_id, status, sum(d) FROM (
        SELECT batch_id, status, 1 AS d FROM new_rows
        UNION ALL
        SELECT batch_id, status, -1 FROM old_rows) x
    GROUP BY 1, 2 HAVING sum(d) <> 0;
    IF FOUND THEN
        INSERT INTO job_done_minutes (batch_id, minute, n)
        SELECT batch_id, date_trunc('minute', finished_at), sum(d) FROM (
            SELECT batch_id, finished_at, 1 AS d FROM new_rows WHERE status = 'done'
            UNION ALL
            SELECT batch_id, finished_at, -1 FROM old_rows WHERE status = 'done') x
        GROUP BY 1, 2 HAVING sum(d) <> 0;
        PERFORM job_counts_maybe_compact();
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION job_counts_on_delete() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts (batch_id, status, n)
    SELECT batch_id, status, -count(*) FROM old_rows GROUP BY 1, 2;
    INSERT INTO job_done_minutes (batch_id, minute, n)
    SELECT batch_id, date_trunc('minute', finished_at), -count(*) FROM old_rows
    WHERE status = 'done' AND finished_at > now() - interval '2 hours' GROUP BY 1, 2;
    PERFORM job_counts_maybe_compact();
    RETURN NULL;
END $$;

-- Loading (issue 14, part 4): the per-row foreign-key checks of jobs cost
-- 40 % of a chunk's insert (two index probes and a row lock per job).
-- Nothing deletes a lane or a batch (purge deletes jobs and keeps the
-- batch), and the loader takes both ids from rows it has just upserted in
-- the same transaction, so the checks guard nothing.
ALTER TABLE jobs DROP CONSTRAINT jobs_lane_id_fkey, DROP CONSTRAINT jobs_batch_id_fkey;

-- No writer may slip between the backfill and the triggers.
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO job_counts (batch_id, status, n)
SELECT batch_id, status, count(*) FROM jobs GROUP BY 1, 2;
INSERT INTO job_done_minutes (batch_id, minute, n)
SELECT batch_id, date_trunc('minute', finished_at), count(*) FROM jobs
WHERE status = 'done' AND finished_at > now() - interval '2 hours' GROUP BY 1, 2;

CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_on_insert();
CREATE TRIGGER job_counts_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_on_update();
CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION job_counts_on_delete();

-- The same columns as before, from the counters. Throughput still reads
-- jobs, but only the last minute's through jobs_batch_finished, once per
-- batch (a LATERAL, not an expression the planner copies into each use).
DROP VIEW batch_progress;
CREATE VIEW batch_progress AS
SELECT b.name                           AS batch,
       b.target,
       b.paused,
       coalesce(c.total, 0)::bigint     AS total,
       coalesce(c.pending, 0)::bigint   AS pending,
       coalesce(c.in_flight, 0)::bigint AS in_flight,
       coalesce(c.done, 0)::bigint      AS done,
       coalesce(c.failed, 0)::bigint    AS failed,
       coalesce(c.skipped, 0)::bigint   AS skipped,
       round(r.recent / 60.0, 2)        AS jobs_per_sec,
       CASE WHEN r.recent > 0
            THEN make_interval(secs => coalesce(c.pending + c.in_flight, 0) / (r.recent / 60.0))
       END                              AS eta
FROM batches b
LEFT JOIN (
    SELECT batch_id,
           sum(n)                                     AS total,
           sum(n) FILTER (WHERE status = 'pending')   AS pending,
           sum(n) FILTER (WHERE status = 'in_flight') AS in_flight,
           sum(n) FILTER (WHERE status = 'done')      AS done,
           sum(n) FILTER (WHERE status = 'failed')    AS failed,
           sum(n) FILTER (WHERE status = 'skipped')   AS skipped
    FROM job_counts GROUP BY batch_id
) c ON c.batch_id = b.id
CROSS JOIN LATERAL (
    SELECT count(*) AS recent FROM jobs j
    WHERE j.batch_id = b.id AND j.finished_at > now() - interval '1 minute'
) r;
