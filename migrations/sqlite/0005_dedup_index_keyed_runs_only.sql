-- At most one active run per dedup key, as before, but the index now holds
-- only runs that have a key. Runs of operations with `dedup = "none"` (no
-- key) used to get an entry on dispatch and another on claim, for a NULL
-- that can never conflict: two index writes per run for nothing. Same name,
-- so the planner statistics seeded for it still apply.
DROP INDEX operation_runs_one_active_per_dedup_key;
CREATE UNIQUE INDEX operation_runs_one_active_per_dedup_key
    ON operation_runs (dedup_key) WHERE dedup_key IS NOT NULL AND status IN ('queued', 'running');
