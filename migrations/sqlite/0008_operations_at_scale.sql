-- Operations at scale: the filters on-call needs, retention, collapsed
-- refusals, schedules paused at run time, and the clean-tick streak.
-- Keep equivalent to migrations/postgres/0008_operations_at_scale.sql.

CREATE INDEX operation_runs_reason ON operation_runs (reason_code, id) WHERE reason_code IS NOT NULL;
-- Keep the expression identical to `SCHEDULE_OF` in shared/src/store/sql/runs.rs.
CREATE INDEX operation_runs_schedule ON operation_runs ((context ->> 'schedule'), id)
    WHERE (context ->> 'schedule') IS NOT NULL;
CREATE INDEX operation_runs_completed ON operation_runs (outcome, completed_at) WHERE status = 'completed';

ALTER TABLE operation_runs ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0 CHECK (refusals >= 0);
ALTER TABLE operation_runs ADD COLUMN last_refused_at TEXT;
ALTER TABLE operation_runs ADD COLUMN refusal_key TEXT;
CREATE UNIQUE INDEX operation_runs_open_refusal ON operation_runs (refusal_key, reason_code)
    WHERE refusal_key IS NOT NULL;

CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_actor ON audit_events (actor_id, id);
CREATE INDEX audit_events_action ON audit_events (action, id);

-- SQLite cannot change a CHECK: the tick table is rebuilt with the new
-- decision and the settling columns.
CREATE TABLE schedule_ticks_new (
    schedule      TEXT NOT NULL,
    scheduled_for TEXT NOT NULL,
    decision      TEXT NOT NULL CHECK (decision IN ('claimed', 'fired', 'skipped_overlap', 'skipped_misfire', 'refused', 'skipped_paused')),
    run_ids       TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(run_ids)),
    details       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(details)),
    decided_by    TEXT NOT NULL,
    decided_at    TEXT NOT NULL,
    settled       INTEGER NOT NULL DEFAULT 0,
    clean         INTEGER,
    PRIMARY KEY (schedule, scheduled_for)
);
INSERT INTO schedule_ticks_new (schedule, scheduled_for, decision, run_ids, details, decided_by, decided_at)
    SELECT schedule, scheduled_for, decision, run_ids, details, decided_by, decided_at FROM schedule_ticks;
DROP TABLE schedule_ticks;
ALTER TABLE schedule_ticks_new RENAME TO schedule_ticks;
CREATE INDEX schedule_ticks_unsettled ON schedule_ticks (schedule, scheduled_for) WHERE settled = 0;
CREATE INDEX schedule_ticks_decided_at ON schedule_ticks (decided_at);

CREATE TABLE schedule_state (
    schedule        TEXT PRIMARY KEY NOT NULL,
    paused_at       TEXT,
    paused_by       TEXT,
    pause_note      TEXT,
    clean_streak    INTEGER NOT NULL DEFAULT 0,
    settled_through TEXT,
    updated_at      TEXT NOT NULL
);
