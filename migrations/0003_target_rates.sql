-- The shared AIMD state per target: a rate-limit answer halves `factor`
-- for every replica; it then recovers linearly with time since
-- `throttled_at` (see src/ratelimit.rs and Store::rate_factors).
CREATE TABLE target_rates (
    target        text        PRIMARY KEY,
    factor        float8      NOT NULL DEFAULT 1.0,
    throttled_at  timestamptz NOT NULL DEFAULT '-infinity'
);
