-- chatferry schema. Everything lives in the schema named by database.schema
-- (the connection's search_path points at it), so chatferry can share a
-- database with other applications.

-- A batch is a named group of loaded messages for one target.
CREATE TABLE batches (
    id          bigserial PRIMARY KEY,
    name        text        NOT NULL,
    target      text        NOT NULL,
    paused      boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, target)
);

-- A lane is one ordered stream of provider calls: for ZIM one user's view of
-- a conversation (target, ImportedUserId, peer), for Tencent one
-- conversation (target, unordered pair of users). One worker at a time holds
-- a lane, under a lease.
CREATE TABLE lanes (
    id            bigserial PRIMARY KEY,
    target        text        NOT NULL,
    lane_key      text        NOT NULL,
    conversation  text        NOT NULL,
    view_user     text,
    -- When the lane may next be claimed. NULL: nothing to do (or blocked).
    -- A leased lane has it equal to lease_until, so an expired lease makes
    -- the lane claimable again with no extra condition.
    available_at  timestamptz,
    lease_owner   uuid,
    lease_token   bigint      NOT NULL DEFAULT 0,
    lease_until   timestamptz,
    -- Set when on_permanent_error = "block" stopped the lane at that job.
    blocked_job   bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (target, lane_key)
);
-- The claim query reads this index only: it never scans idle lanes.
CREATE INDEX lanes_claimable ON lanes (available_at) WHERE available_at IS NOT NULL;

CREATE TYPE job_status AS ENUM ('pending', 'in_flight', 'done', 'failed', 'skipped');

-- A job is one provider call: one message for Tencent, one (message, view)
-- for ZIM.
CREATE TABLE jobs (
    id                  bigserial   PRIMARY KEY,
    lane_id             bigint      NOT NULL REFERENCES lanes (id),
    batch_id            bigint      NOT NULL REFERENCES batches (id),
    -- The source system's message id; unique within the lane's conversation.
    source_id           text        NOT NULL,
    -- Order within the lane: send time, then input order.
    sent_at_ms          bigint      NOT NULL,
    input_seq           bigint      NOT NULL,
    -- The provider request body, built and frozen at load: a retry sends
    -- these exact bytes.
    body                text        NOT NULL,
    status              job_status  NOT NULL DEFAULT 'pending',
    attempts            integer     NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    last_code           bigint,
    last_error          text,
    provider_msg_id     text,
    provider_msg_seq    bigint,
    provider_request_id text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    UNIQUE (lane_id, source_id)
);
-- The head of each lane: small, since done jobs leave it.
CREATE INDEX jobs_lane_open ON jobs (lane_id, sent_at_ms, input_seq)
    WHERE status IN ('pending', 'in_flight');
-- Progress per batch and recent throughput.
CREATE INDEX jobs_batch_status ON jobs (batch_id, status);
CREATE INDEX jobs_batch_finished ON jobs (batch_id, finished_at)
    WHERE finished_at IS NOT NULL;

-- Input order across loads: each load takes a base from here.
CREATE SEQUENCE load_seq;

-- Live worker processes, for rate sharing and for operators.
CREATE TABLE workers (
    id            uuid        PRIMARY KEY,
    host          text        NOT NULL,
    pid           integer     NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

-- Progress per batch, for operators: counts by status, throughput over the
-- last minute and a naive ETA at that rate.
CREATE VIEW batch_progress AS
SELECT b.name                                            AS batch,
       b.target,
       b.paused,
       count(j.id)                                       AS total,
       count(j.id) FILTER (WHERE j.status = 'pending')   AS pending,
       count(j.id) FILTER (WHERE j.status = 'in_flight') AS in_flight,
       count(j.id) FILTER (WHERE j.status = 'done')      AS done,
       count(j.id) FILTER (WHERE j.status = 'failed')    AS failed,
       count(j.id) FILTER (WHERE j.status = 'skipped')   AS skipped,
       round(count(j.id) FILTER (WHERE j.finished_at > now() - interval '1 minute') / 60.0, 2)
                                                         AS jobs_per_sec,
       CASE WHEN count(j.id) FILTER (WHERE j.finished_at > now() - interval '1 minute') > 0
            THEN make_interval(secs => count(j.id) FILTER (WHERE j.status IN ('pending', 'in_flight'))
                 / (count(j.id) FILTER (WHERE j.finished_at > now() - interval '1 minute') / 60.0))
       END                                               AS eta
FROM batches b
LEFT JOIN jobs j ON j.batch_id = b.id
GROUP BY b.id, b.name, b.target, b.paused;
