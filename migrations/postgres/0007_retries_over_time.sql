-- Retries over time and snoozes. Keep equivalent to
-- migrations/sqlite/0007_retries_over_time.sql.
--
-- `snoozes`: how often the run was put back to wait without using an
-- attempt (a provider's Retry-After beyond the in-attempt cap, or its
-- handler asking to run again later); the retry policy bounds it.
ALTER TABLE operation_runs ADD COLUMN snoozes INTEGER NOT NULL DEFAULT 0 CHECK (snoozes >= 0);
