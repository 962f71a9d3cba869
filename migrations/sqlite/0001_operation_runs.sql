-- The truth about every run, and the append-only audit log.
-- Keep equivalent to migrations/postgres/0001_operation_runs.sql.
-- Ids are 16-byte UUID blobs, times RFC 3339 UTC text (written by the store,
-- never by SQLite's own clock), JSON is text.

CREATE TABLE operation_runs (
    id                  BLOB PRIMARY KEY NOT NULL,
    operation           TEXT NOT NULL,
    workspace_id        TEXT NOT NULL,
    environment_id      TEXT,
    target_type         TEXT,
    target_id           TEXT,
    actor_kind          TEXT NOT NULL CHECK (actor_kind IN ('user', 'service', 'schedule')),
    actor_id            TEXT NOT NULL,
    source_surface      TEXT NOT NULL CHECK (source_surface IN ('scheduler', 'cli', 'api', 'retry', 'reconciler')),
    context             TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(context)),
    params              TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
    dedup_key           TEXT,
    status              TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed')),
    outcome             TEXT NOT NULL CHECK (outcome IN ('pending', 'succeeded', 'partially_succeeded', 'failed', 'blocked', 'cancelled')),
    reason_code         TEXT,
    failure_summary     TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(failure_summary)),
    summary_counts      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(summary_counts)),
    checkpoint          TEXT CHECK (checkpoint IS NULL OR json_valid(checkpoint)),
    attempt             INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    max_attempts        INTEGER NOT NULL CHECK (max_attempts >= 1),
    retry_of            BLOB REFERENCES operation_runs (id),
    lease_owner         TEXT,
    lease_expires_at    TEXT,
    heartbeat_at        TEXT,
    cancel_requested_at TEXT,
    queued_at           TEXT NOT NULL,
    repushed_at         TEXT,
    created_at          TEXT NOT NULL,
    started_at          TEXT,
    completed_at        TEXT,
    updated_at          TEXT NOT NULL,
    CONSTRAINT outcome_matches_status CHECK ((status = 'completed') = (outcome <> 'pending')),
    CONSTRAINT lease_only_while_running CHECK ((status = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT completed_has_time CHECK ((status = 'completed') = (completed_at IS NOT NULL))
);

CREATE UNIQUE INDEX operation_runs_one_active_per_dedup_key
    ON operation_runs (dedup_key) WHERE status IN ('queued', 'running');
CREATE INDEX operation_runs_running_lease ON operation_runs (lease_expires_at) WHERE status = 'running';
CREATE INDEX operation_runs_queued_at ON operation_runs (queued_at) WHERE status = 'queued';
CREATE INDEX operation_runs_workspace_id ON operation_runs (workspace_id, id);
CREATE INDEX operation_runs_retry_of ON operation_runs (retry_of) WHERE retry_of IS NOT NULL;

CREATE TABLE audit_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             TEXT NOT NULL,
    actor_kind     TEXT NOT NULL CHECK (actor_kind IN ('user', 'service', 'schedule')),
    actor_id       TEXT NOT NULL,
    action         TEXT NOT NULL,
    run_id         BLOB,
    workspace_id   TEXT,
    environment_id TEXT,
    from_status    TEXT,
    to_status      TEXT,
    outcome        TEXT,
    reason_code    TEXT,
    details        TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(details))
);
CREATE INDEX audit_events_run_id ON audit_events (run_id, id);
