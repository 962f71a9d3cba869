-- Stale running runs are read in pages in id order (`status = 'running' AND
-- lease_expires_at < $cutoff AND id > $after ORDER BY id LIMIT n`). An index
-- on id over the running runs serves each page by walking only running runs
-- from `after`: a page costs its size, whatever the planner's statistics say.
-- The lease index it replaces could only be read as a bitmap of every stale
-- run, then sorted, for every page (a pass over N stale runs cost O(N^2)).
DROP INDEX operation_runs_running_lease;
CREATE INDEX operation_runs_running_id ON operation_runs (id) WHERE status = 'running';
