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
CREATE INDEX job_counts_batch ON job_counts (batch_id);

-- Folds every committed delta into one row per (batch, status). One
-- compaction at a time (the others skip); rows committed after this
-- statement's snapshot are neither deleted nor counted, so a concurrent
-- writer's delta is never lost. The lock key is this table's oid, so
-- schemas sharing a database do not skip each other.
CREATE FUNCTION job_counts_compact() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock('job_counts'::regclass::oid::bigint) THEN
        WITH gone AS (DELETE FROM job_counts RETURNING batch_id, status, n)
        INSERT INTO job_counts (batch_id, status, n)
        SELECT batch_id, status, sum(n) FROM gone GROUP BY 1, 2 HAVING sum(n) <> 0;
    END IF;
END $$;

-- One statement in 256 also compacts: the delta rows stay in the low
-- thousands whatever the rate, at the cost of one short fold.
CREATE FUNCTION job_counts_maybe_compact() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF random() < 1.0 / 256 THEN
        PERFORM job_counts_compact();
    END IF;
END $$;

CREATE FUNCTION job_counts_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (batch_id, status, n)
    SELECT batch_id, status, count(*) FROM new_rows GROUP BY 1, 2;
    PERFORM job_counts_maybe_compact();
    RETURN NULL;
END $$;

-- Statement-level with transition tables: one delta insert per statement
-- however many rows it changes, and none when no status changed (a
-- deferral, a reconcile note).
CREATE FUNCTION job_counts_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (batch_id, status, n)
    SELECT batch_id, status, sum(d) FROM (
        SELECT batch_id, status, 1 AS d FROM new_rows
        UNION ALL
        SELECT batch_id, status, -1 FROM old_rows) x
    GROUP BY 1, 2 HAVING sum(d) <> 0;
    IF FOUND THEN
        PERFORM job_counts_maybe_compact();
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION job_counts_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (batch_id, status, n)
    SELECT batch_id, status, -count(*) FROM old_rows GROUP BY 1, 2;
    PERFORM job_counts_maybe_compact();
    RETURN NULL;
END $$;

-- No writer may slip between the backfill and the triggers.
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO job_counts (batch_id, status, n)
SELECT batch_id, status, count(*) FROM jobs GROUP BY 1, 2;

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
-- jobs, but only the last minute's through jobs_batch_finished.
DROP VIEW batch_progress;
CREATE VIEW batch_progress AS
WITH c AS (
    SELECT batch_id,
           sum(n)                                     AS total,
           sum(n) FILTER (WHERE status = 'pending')   AS pending,
           sum(n) FILTER (WHERE status = 'in_flight') AS in_flight,
           sum(n) FILTER (WHERE status = 'done')      AS done,
           sum(n) FILTER (WHERE status = 'failed')    AS failed,
           sum(n) FILTER (WHERE status = 'skipped')   AS skipped
    FROM job_counts GROUP BY batch_id
), b AS (
    SELECT b.id, b.name, b.target, b.paused,
           coalesce(c.total, 0)::bigint     AS total,
           coalesce(c.pending, 0)::bigint   AS pending,
           coalesce(c.in_flight, 0)::bigint AS in_flight,
           coalesce(c.done, 0)::bigint      AS done,
           coalesce(c.failed, 0)::bigint    AS failed,
           coalesce(c.skipped, 0)::bigint   AS skipped,
           (SELECT count(*) FROM jobs j
             WHERE j.batch_id = b.id AND j.finished_at > now() - interval '1 minute') AS recent
    FROM batches b LEFT JOIN c ON c.batch_id = b.id
)
SELECT name AS batch, target, paused, total, pending, in_flight, done, failed, skipped,
       round(recent / 60.0, 2) AS jobs_per_sec,
       CASE WHEN recent > 0
            THEN make_interval(secs => (pending + in_flight) / (recent / 60.0))
       END AS eta
FROM b;
