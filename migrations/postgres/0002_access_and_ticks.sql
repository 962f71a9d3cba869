-- Access truth (what reauthorization checks) and the scheduler's tick record.
-- Keep equivalent to migrations/sqlite/0002_access_and_ticks.sql.
-- Written only by `oprun access apply` (access) and the scheduler (ticks).

CREATE TABLE actors (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('user', 'service')),
    display_name TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL CHECK (status IN ('active', 'disabled'))
);

CREATE TABLE workspaces (
    id     TEXT PRIMARY KEY,
    name   TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'suspended'))
);

CREATE TABLE environments (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    name         TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'offboarded'))
);
CREATE INDEX environments_workspace ON environments (workspace_id, status);

CREATE TABLE roles (
    name TEXT PRIMARY KEY
);

CREATE TABLE role_capabilities (
    role       TEXT NOT NULL REFERENCES roles (name),
    capability TEXT NOT NULL,
    PRIMARY KEY (role, capability)
);

CREATE TABLE memberships (
    actor_id     TEXT NOT NULL REFERENCES actors (id),
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    role         TEXT NOT NULL REFERENCES roles (name),
    PRIMARY KEY (actor_id, workspace_id, role)
);

CREATE TABLE provider_connections (
    id             TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL REFERENCES environments (id),
    provider       TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('connected', 'consent_revoked', 'credentials_invalid')),
    UNIQUE (environment_id, provider)
);

-- One row per expected tick of a schedule. The primary key makes a tick fire
-- once however many schedulers run: the first to insert it owns it.
CREATE TABLE schedule_ticks (
    schedule      TEXT NOT NULL,
    scheduled_for TIMESTAMPTZ NOT NULL,
    decision      TEXT NOT NULL CHECK (decision IN ('claimed', 'fired', 'skipped_overlap', 'skipped_misfire', 'refused')),
    run_ids       JSONB NOT NULL DEFAULT '[]',
    details       JSONB NOT NULL DEFAULT '{}',
    decided_by    TEXT NOT NULL,
    decided_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (schedule, scheduled_for)
);
