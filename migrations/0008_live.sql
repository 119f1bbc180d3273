-- The cut-over (issue 16): live batches, batch priority, lane priority.
--
-- mode:      'history' (files, `load`) or 'live' (the ingest API).
-- priority:  `load --priority N`; higher batches are claimed first.
-- lanes.priority: the highest priority of the batches with open jobs in
--            the lane (a live batch counts as 2^30, above any operator
--            priority), so a lane holding a live message is claimed first,
--            history ahead of it included: the history it waits behind is
--            promoted with it. Raised by inserts, recomputed at release.
ALTER TABLE batches
    ADD COLUMN mode     text    NOT NULL DEFAULT 'history' CHECK (mode IN ('history', 'live')),
    ADD COLUMN priority integer NOT NULL DEFAULT 0;
ALTER TABLE lanes ADD COLUMN priority integer NOT NULL DEFAULT 0;
-- The claim reads claimable lanes in (priority, due time) order.
CREATE INDEX lanes_claim_order ON lanes (priority DESC, available_at)
    WHERE available_at IS NOT NULL;

-- Live batches for operators: calls received and delivered, delivery
-- latency (commit of the job to its done checkpoint) over the last five
-- minutes, and the age of the oldest undelivered call. A ZIM message
-- visible to both users is two calls.
CREATE VIEW live_progress AS
SELECT b.name                                                      AS batch,
       b.target,
       count(j.id)                                                 AS received,
       count(j.id) FILTER (WHERE j.status = 'done')                AS delivered,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM (j.finished_at - j.created_at)))
           FILTER (WHERE j.status = 'done' AND j.finished_at > now() - interval '5 minutes')
                                                                   AS latency_p50_secs,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM (j.finished_at - j.created_at)))
           FILTER (WHERE j.status = 'done' AND j.finished_at > now() - interval '5 minutes')
                                                                   AS latency_p99_secs,
       extract(epoch FROM (now() - min(j.created_at) FILTER (WHERE j.status IN ('pending', 'in_flight'))))
                                                                   AS oldest_undelivered_secs
FROM batches b
LEFT JOIN jobs j ON j.batch_id = b.id
WHERE b.mode = 'live'
GROUP BY b.id, b.name, b.target;
