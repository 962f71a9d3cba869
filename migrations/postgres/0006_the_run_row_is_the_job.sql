-- The run row is the job: workers claim ready runs straight from
-- operation_runs. Keep equivalent to migrations/sqlite/0006_the_run_row_is_the_job.sql.
--
-- `available_at`: when a queued run may be claimed (dispatch `--at`/`--in`,
-- and later retries over time). Runs queued before this migration are ready
-- at once.
ALTER TABLE operation_runs ADD COLUMN available_at TIMESTAMPTZ;
UPDATE operation_runs SET available_at = queued_at;
ALTER TABLE operation_runs ALTER COLUMN available_at SET NOT NULL;

-- Fair claiming walks the queued runs scope by scope (workspace and
-- environment: the "scope key"), oldest first within each: one index serves
-- both the skip scan over the scopes and, within one scope, the runs ready
-- longest (by `available_at`, then id).
-- Keep the expression identical to `SCOPE_KEY` in shared/src/store/sql/runs.rs.
CREATE INDEX operation_runs_ready
    ON operation_runs ((workspace_id || '/' || COALESCE(environment_id, '')), available_at, id)
    WHERE status = 'queued';
