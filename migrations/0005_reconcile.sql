-- Reconcile that waits for the truth (ZIM has no idempotency key).
--
-- in_flight_at:       when the latest in-flight mark was written (database
--                     clock); an in-doubt job is reconciled only once this
--                     is reconcile_settle_secs old, so a request the
--                     provider applies after the client gave up is visible.
-- first_in_flight_at: the first mark; a provider that reports its own
--                     receive time as MsgTime received the job after this.
-- in_doubt:           the job was once in doubt; every later attempt
--                     reconciles first, whatever answer came in between.
-- reconcile_attempts: reconciles that could not decide; past
--                     worker.max_reconcile_attempts the job fails.
ALTER TABLE jobs
    ADD COLUMN in_flight_at       timestamptz,
    ADD COLUMN first_in_flight_at timestamptz,
    ADD COLUMN in_doubt           boolean NOT NULL DEFAULT false,
    ADD COLUMN reconcile_attempts integer NOT NULL DEFAULT 0;

-- What `chatferry probe` measured against a target's real account; the
-- worker reads it at start (e.g. whether MsgTime echoes SendMessageTime).
CREATE TABLE probe_findings (
    target     text        PRIMARY KEY,
    findings   jsonb       NOT NULL,
    probed_at  timestamptz NOT NULL DEFAULT now()
);
