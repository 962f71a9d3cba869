-- The truth about every run, and the append-only audit log.
-- Keep equivalent to migrations/sqlite/0001_operation_runs.sql.

CREATE TABLE operation_runs (
    id                  UUID PRIMARY KEY,
    operation           TEXT NOT NULL,
    workspace_id        TEXT NOT NULL,
    environment_id      TEXT,
    target_type         TEXT,
    target_id           TEXT,
    actor_kind          TEXT NOT NULL CHECK (actor_kind IN ('user', 'service', 'schedule')),
    actor_id            TEXT NOT NULL,
    source_surface      TEXT NOT NULL CHECK (source_surface IN ('scheduler', 'cli', 'api', 'retry', 'reconciler')),
    context             JSONB NOT NULL DEFAULT '{}',
    params              JSONB NOT NULL DEFAULT '{}',
    dedup_key           TEXT,
    status              TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed')),
    outcome             TEXT NOT NULL CHECK (outcome IN ('pending', 'succeeded', 'partially_succeeded', 'failed', 'blocked', 'cancelled')),
    reason_code         TEXT,
    failure_summary     JSONB NOT NULL DEFAULT '[]',
    summary_counts      JSONB NOT NULL DEFAULT '{}',
    checkpoint          JSONB,
    attempt             INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    max_attempts        INTEGER NOT NULL CHECK (max_attempts >= 1),
    retry_of            UUID REFERENCES operation_runs (id),
    lease_owner         TEXT,
    lease_expires_at    TIMESTAMPTZ,
    heartbeat_at        TIMESTAMPTZ,
    cancel_requested_at TIMESTAMPTZ,
    queued_at           TIMESTAMPTZ NOT NULL,
    repushed_at         TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL,
    started_at          TIMESTAMPTZ,
    completed_at        TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ NOT NULL,
    -- A completed run has a terminal outcome; any other run is pending.
    CONSTRAINT outcome_matches_status CHECK ((status = 'completed') = (outcome <> 'pending')),
    -- A running run has a lease; no other run does.
    CONSTRAINT lease_only_while_running CHECK ((status = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT completed_has_time CHECK ((status = 'completed') = (completed_at IS NOT NULL))
);

-- At most one active run per dedup key.
CREATE UNIQUE INDEX operation_runs_one_active_per_dedup_key
    ON operation_runs (dedup_key) WHERE status IN ('queued', 'running');
-- The reconciler's two scans.
CREATE INDEX operation_runs_running_lease ON operation_runs (lease_expires_at) WHERE status = 'running';
CREATE INDEX operation_runs_queued_at ON operation_runs (queued_at) WHERE status = 'queued';
-- Operator listings by workspace, newest first.
CREATE INDEX operation_runs_workspace_id ON operation_runs (workspace_id, id);
CREATE INDEX operation_runs_retry_of ON operation_runs (retry_of) WHERE retry_of IS NOT NULL;

CREATE TABLE audit_events (
    id             BIGSERIAL PRIMARY KEY,
    at             TIMESTAMPTZ NOT NULL,
    actor_kind     TEXT NOT NULL CHECK (actor_kind IN ('user', 'service', 'schedule')),
    actor_id       TEXT NOT NULL,
    action         TEXT NOT NULL,
    run_id         UUID,
    workspace_id   TEXT,
    environment_id TEXT,
    from_status    TEXT,
    to_status      TEXT,
    outcome        TEXT,
    reason_code    TEXT,
    details        JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_run_id ON audit_events (run_id, id);
