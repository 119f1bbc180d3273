-- A read-only role for operators: progress, failures, lanes, workers.
-- Run once per cluster as a role that may create roles, and again after a
-- `chatferry migrate` that added tables:
--
--   psql "$DATABASE_URL" -v schema=chatferry -f deploy/sql/operator-role.sql
--   psql "$DATABASE_URL" -c "CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE chatferry_operator"
--
-- Example queries are in the README ("Operating it through SQL").
\set ON_ERROR_STOP on
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chatferry_operator') AS create_role \gset
\if :create_role
CREATE ROLE chatferry_operator NOLOGIN;
\endif
GRANT USAGE ON SCHEMA :"schema" TO chatferry_operator;
GRANT SELECT ON ALL TABLES IN SCHEMA :"schema" TO chatferry_operator;
-- Operators read; they never write. Changes go through the CLI
-- (pause, resume, retry, skip), which runs as the daemon's role.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA :"schema" FROM chatferry_operator;
