-- Operations at scale: the filters on-call needs, retention, collapsed
-- refusals, schedules paused at run time, and the clean-tick streak.
-- Keep equivalent to migrations/sqlite/0008_operations_at_scale.sql.

-- Filters (`runs list`, `GET /v1/runs`, actions by filter). Lists are newest
-- first (by id), so each index ends in id: a filter reads its page off the
-- index in order, whatever the table's size. Only partial indexes that the
-- common path (a run dispatched, claimed and succeeded) never writes: every
-- update of a run is a new row version with an entry in every index, so a
-- full index costs three writes per run (measured: environment, actor and
-- created_at indexes together took 14 % off `oprun bench` on Postgres).
-- Environment, initiator and created-time filters read the primary key
-- newest first (or the workspace index) and stop at the page.
CREATE INDEX operation_runs_reason ON operation_runs (reason_code, id) WHERE reason_code IS NOT NULL;
-- Keep the expression identical to `SCHEDULE_OF` in shared/src/store/sql/runs.rs.
CREATE INDEX operation_runs_schedule ON operation_runs ((context ->> 'schedule'), id)
    WHERE (context ->> 'schedule') IS NOT NULL;
-- Completed runs by outcome and age: retention's pages (oldest first, one
-- outcome's window at a time) and the completed-time filters.
CREATE INDEX operation_runs_completed ON operation_runs (outcome, completed_at) WHERE status = 'completed';

-- A scheduled dispatch refused tick after tick keeps one blocked run per
-- schedule, scope and reason while the refusal lasts: `refusals` counts the
-- ticks it stood for, `last_refused_at` the newest. `refusal_key` names the
-- open refusal (schedule|workspace|environment); it is cleared when the
-- schedule fires in that scope again or an operator retries the run, so that
-- the next refusal is a new one.
ALTER TABLE operation_runs ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0 CHECK (refusals >= 0);
ALTER TABLE operation_runs ADD COLUMN last_refused_at TIMESTAMPTZ;
ALTER TABLE operation_runs ADD COLUMN refusal_key TEXT;
CREATE UNIQUE INDEX operation_runs_open_refusal ON operation_runs (refusal_key, reason_code)
    WHERE refusal_key IS NOT NULL;

-- Retention prunes audit rows by age (those of no run) and with their run.
CREATE INDEX audit_events_at ON audit_events (at);
-- `oprun audit --actor/--action`.
CREATE INDEX audit_events_actor ON audit_events (actor_id, id);
CREATE INDEX audit_events_action ON audit_events (action, id);

-- Ticks: a paused schedule's ticks are recorded `skipped_paused`; `clean`
-- is set when a tick settles (`settled` = 1) once its outcome is known: 1
-- fired and every run succeeded, 0 not, NULL neutral (a paused tick).
ALTER TABLE schedule_ticks DROP CONSTRAINT schedule_ticks_decision_check;
ALTER TABLE schedule_ticks ADD CONSTRAINT schedule_ticks_decision_check
    CHECK (decision IN ('claimed', 'fired', 'skipped_overlap', 'skipped_misfire', 'refused', 'skipped_paused'));
ALTER TABLE schedule_ticks ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE schedule_ticks ADD COLUMN clean INTEGER;
CREATE INDEX schedule_ticks_unsettled ON schedule_ticks (schedule, scheduled_for) WHERE settled = 0;
CREATE INDEX schedule_ticks_decided_at ON schedule_ticks (decided_at);

-- A schedule's run-time state: paused (every scheduler honours it) and its
-- clean streak, kept up to date as ticks settle (no query per tick).
CREATE TABLE schedule_state (
    schedule        TEXT PRIMARY KEY,
    paused_at       TIMESTAMPTZ,
    paused_by       TEXT,
    pause_note      TEXT,
    clean_streak    INTEGER NOT NULL DEFAULT 0,
    settled_through TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL
);
