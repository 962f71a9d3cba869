//! The run and audit queries, one function per statement, and the decoding
//! of what they return. Written once for both backends; `B::push_ids` is
//! the one place the backends differ in them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Backend, Cols, Stmt};
use crate::audit::{AuditEntry, AuditEvent};
use crate::counts::SummaryCounts;
use crate::lifecycle::RunStatus;
use crate::run::{Initiator, OperationRun};
use crate::store::{Guard, MAX_PAGE, RunCount, RunFilter, RunWrite, StaleQuery, StaleRun, StoreError, Written};

/// The columns of `operation_runs` a new run is written with, in insert
/// order (the others start at their defaults: `snoozes`).
pub(crate) const RUN_COLUMNS: &str = "id, operation, workspace_id, environment_id, target_type, target_id, \
    actor_kind, actor_id, source_surface, context, params, dedup_key, status, outcome, reason_code, \
    failure_summary, summary_counts, checkpoint, attempt, max_attempts, retry_of, lease_owner, \
    lease_expires_at, heartbeat_at, cancel_requested_at, queued_at, repushed_at, created_at, started_at, \
    completed_at, updated_at, available_at";

/// Every column of `audit_events` but its id, in insert order.
pub(crate) const AUDIT_COLUMNS: &str = "at, actor_kind, actor_id, action, run_id, workspace_id, environment_id, \
    from_status, to_status, outcome, reason_code, details";

/// What a brief write returns of each run: enough for its audit row.
pub(crate) const BRIEF_COLUMNS: &str = "id, attempt, workspace_id, environment_id, status, outcome, reason_code";

/// What the reconciler reads of a stale candidate (`StaleRun`).
const STALE_COLUMNS: &str =
    "id, operation, workspace_id, attempt, max_attempts, cancel_requested_at, lease_expires_at, queued_at, repushed_at";

/// The predicate of the one-active-run-per-dedup-key index (migration 0005),
/// which an upsert's `ON CONFLICT (dedup_key) WHERE …` must name.
pub(crate) const ACTIVE_KEYED: &str = "dedup_key IS NOT NULL AND status IN ('queued', 'running')";

/// The scope key fair claiming takes turns by: workspace and environment.
/// Identical to the expression of the ready index (migration 0006), so that
/// the index serves every statement that names it.
pub(crate) const SCOPE_KEY: &str = "(workspace_id || '/' || COALESCE(environment_id, ''))";

/// The scope keys that have queued runs, in key order, after `after` (`""`:
/// from the first), at most `limit`: a skip scan over the ready index, one
/// index probe per scope, however long each scope's backlog.
pub(crate) fn select_queued_scopes(after: &str, limit: i64) -> Stmt {
    let next = |from: &str| {
        format!(
            "(SELECT {SCOPE_KEY} FROM operation_runs WHERE status = 'queued' AND {SCOPE_KEY} > {from} ORDER BY {SCOPE_KEY} LIMIT 1)"
        )
    };
    Stmt::new(format!(
        "WITH RECURSIVE s(k, n) AS (SELECT {}, 1 UNION ALL SELECT {}, s.n + 1 FROM s WHERE s.k IS NOT NULL AND s.n < $2) \
         SELECT k FROM s WHERE k IS NOT NULL",
        next("$1"),
        next("s.k")
    ))
    .arg(after)
    .arg(limit)
}

/// The ids of one scope's ready runs, ready longest first, at most `limit`
/// (the backends that lock rows add their clause).
pub(crate) fn select_ready_in_scope(
    scope: &str,
    now: DateTime<Utc>,
    limit: i64,
    skip: &[(String, String)],
    only: Option<&[String]>,
) -> Stmt {
    let mut sql =
        format!("SELECT id FROM operation_runs WHERE status = 'queued' AND {SCOPE_KEY} = $1 AND available_at <= $2");
    for i in 0..skip.len() {
        let n = 4 + 2 * i;
        sql.push_str(&format!(" AND NOT (coalesce(environment_id, '') = ${n} AND operation = ${})", n + 1));
    }
    if let Some(ops) = only {
        let first = 4 + 2 * skip.len();
        let marks: Vec<String> = (0..ops.len()).map(|i| format!("${}", first + i)).collect();
        // An empty list admits nothing (a worker serving no operation).
        sql.push_str(&if ops.is_empty() {
            " AND 1 = 0".to_string()
        } else {
            format!(" AND operation IN ({})", marks.join(", "))
        });
    }
    sql.push_str(&format!(" ORDER BY {SCOPE_KEY}, available_at, id LIMIT $3"));
    let mut stmt = Stmt::new(sql).arg(scope).arg(now).arg(limit);
    for (e, o) in skip {
        stmt = stmt.arg(e.as_str()).arg(o.as_str());
    }
    for o in only.unwrap_or_default() {
        stmt = stmt.arg(o.as_str());
    }
    stmt
}

/// How many runs are queued and ready at `now`.
pub(crate) fn count_ready(now: DateTime<Utc>) -> Stmt {
    Stmt::new("SELECT COUNT(*) AS n FROM operation_runs WHERE status = 'queued' AND available_at <= $1").arg(now)
}

/// One run by id.
pub(crate) const SELECT_RUN: &str = "SELECT * FROM operation_runs WHERE id = $1";

/// The active run holding a dedup key.
pub(crate) const SELECT_ACTIVE_FOR_KEY: &str =
    "SELECT * FROM operation_runs WHERE dedup_key = $1 AND status IN ('queued', 'running')";

/// A run's audit trail, oldest first.
pub(crate) const SELECT_AUDIT_FOR_RUN: &str = "SELECT * FROM audit_events WHERE run_id = $1 ORDER BY id";

/// Insert `runs` (a run whose dedup key an active run holds is left out),
/// returning each run written. 32 binds a run: at most 1,000 runs a statement.
pub(crate) fn insert_runs<'a>(runs: impl IntoIterator<Item = &'a OperationRun>) -> Stmt {
    let mut q = Stmt::new(format!("INSERT INTO operation_runs ({RUN_COLUMNS}) VALUES "));
    for (i, run) in runs.into_iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.bind_list(run_values(run));
    }
    q.push(&format!(" ON CONFLICT (dedup_key) WHERE {ACTIVE_KEYED} DO NOTHING RETURNING *"));
    q
}

/// A run's columns, in [`RUN_COLUMNS`] order.
pub(crate) fn run_values(run: &OperationRun) -> Vec<super::Arg> {
    vec![
        run.id.into(),
        run.operation.as_str().into(),
        run.workspace_id.as_str().into(),
        run.environment_id.clone().into(),
        run.target_type.clone().into(),
        run.target_id.clone().into(),
        run.initiator.kind.as_str().into(),
        run.initiator.id.as_str().into(),
        run.source_surface.as_str().into(),
        run.context.clone().into(),
        run.params.clone().into(),
        run.dedup_key.clone().into(),
        run.status.as_str().into(),
        run.outcome.as_str().into(),
        run.reason_code.clone().into(),
        serde_json::to_value(&run.failure_summary).unwrap_or_default().into(),
        run.summary_counts.to_json().into(),
        run.checkpoint.clone().into(),
        run.attempt.into(),
        run.max_attempts.into(),
        run.retry_of.into(),
        run.lease_owner.clone().into(),
        run.lease_expires_at.into(),
        run.heartbeat_at.into(),
        run.cancel_requested_at.into(),
        run.queued_at.into(),
        run.repushed_at.into(),
        run.created_at.into(),
        run.started_at.into(),
        run.completed_at.into(),
        run.updated_at.into(),
        run.available_at.into(),
    ]
}

/// Insert audit rows (12 binds a row: callers chunk by 2,000).
pub(crate) fn insert_audit(entries: &[AuditEntry]) -> Stmt {
    let mut q = Stmt::new(format!("INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES "));
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.bind_list([
            e.at.into(),
            e.actor.kind.as_str().into(),
            e.actor.id.as_str().into(),
            e.action.as_str().into(),
            e.run_id.into(),
            e.workspace_id.clone().into(),
            e.environment_id.clone().into(),
            e.from_status.map(|s| s.as_str()).into(),
            e.to_status.map(|s| s.as_str()).into(),
            e.outcome.map(|s| s.as_str()).into(),
            e.reason_code.clone().into(),
            super::Arg::from(e.details.clone()),
        ]);
    }
    q
}

/// `UPDATE operation_runs SET <write> WHERE <ids> <guard>` (no `RETURNING`):
/// the guarded write of one chunk of runs.
pub(crate) fn update_guarded<B: Backend>(ids: &[Uuid], guard: &Guard, write: &RunWrite, now: DateTime<Utc>) -> Stmt {
    let mut q = Stmt::new("UPDATE operation_runs SET ");
    push_write(&mut q, write, now);
    q.push(" WHERE");
    B::push_ids(&mut q, ids);
    push_guard(&mut q, guard);
    q
}

/// Store a run's merged counts.
pub(crate) fn update_counts(id: Uuid, counts: &SummaryCounts) -> Stmt {
    Stmt::new("UPDATE operation_runs SET summary_counts = $1 WHERE id = $2").arg(counts.to_json()).arg(id)
}

/// Runs by id.
pub(crate) fn select_runs<B: Backend>(ids: &[Uuid]) -> Stmt {
    let mut q = Stmt::new("SELECT * FROM operation_runs WHERE");
    B::push_ids(&mut q, ids);
    q
}

/// The schedule a run was dispatched by (its context's `schedule`).
/// Identical to the expression of the schedule index (migration 0008).
pub(crate) const SCHEDULE_OF: &str = "(context ->> 'schedule')";

/// A page of runs, newest first; `None` when the filter admits none.
pub(crate) fn list_runs(f: &RunFilter) -> Option<Stmt> {
    let mut q = Stmt::new("SELECT * FROM operation_runs WHERE 1 = 1");
    push_filter(&mut q, f)?;
    q.push(" ORDER BY id DESC LIMIT ").bind(i64::from(f.limit.clamp(1, MAX_PAGE)));
    Some(q)
}

/// Runs `f` admits, counted per workspace, status and outcome.
pub(crate) fn count_runs(f: &RunFilter) -> Option<Stmt> {
    let mut q = Stmt::new("SELECT workspace_id, status, outcome, COUNT(*) AS n FROM operation_runs WHERE 1 = 1");
    let f = RunFilter { before: None, retry_of: None, ..f.clone() };
    push_filter(&mut q, &f)?;
    q.push(" GROUP BY workspace_id, status, outcome ORDER BY workspace_id, status, outcome");
    Some(q)
}

/// The conditions of `f` (after a `WHERE …`); `None` when it admits none.
fn push_filter(q: &mut Stmt, f: &RunFilter) -> Option<()> {
    if let Some(ws) = &f.visible_workspaces {
        if ws.is_empty() {
            return None;
        }
        q.push(" AND workspace_id IN ").bind_list(ws);
    }
    if let Some(ws) = &f.workspace_in {
        if ws.is_empty() {
            return None;
        }
        q.push(" AND workspace_id IN ").bind_list(ws);
    }
    if let Some(v) = &f.workspace_id {
        q.push(" AND workspace_id = ").bind(v);
    }
    if let Some(v) = &f.operation {
        q.push(" AND operation = ").bind(v);
    }
    if let Some(v) = f.status {
        q.push(" AND status = ").bind(v.as_str());
    }
    if let Some(v) = f.outcome {
        q.push(" AND outcome = ").bind(v.as_str());
    }
    if let Some(v) = f.retry_of {
        q.push(" AND retry_of = ").bind(v);
    }
    if let Some(v) = f.waiting_at {
        q.push(" AND status = 'queued' AND available_at > ").bind(v);
    }
    if let Some(v) = &f.reason_code {
        q.push(" AND reason_code = ").bind(v);
    }
    if let Some(v) = &f.environment_id {
        q.push(" AND environment_id = ").bind(v);
    }
    if let Some(v) = &f.schedule {
        q.push(&format!(" AND {SCHEDULE_OF} = ")).bind(v);
    }
    if let Some(i) = &f.initiator {
        if let Some(kind) = i.kind {
            q.push(" AND actor_kind = ").bind(kind.as_str());
        }
        q.push(" AND actor_id = ").bind(&i.id);
    }
    if let Some(v) = f.created_after {
        q.push(" AND created_at >= ").bind(v);
    }
    if let Some(v) = f.created_before {
        q.push(" AND created_at < ").bind(v);
    }
    if let Some(v) = f.completed_after {
        q.push(" AND status = 'completed' AND completed_at >= ").bind(v);
    }
    if let Some(v) = f.completed_before {
        q.push(" AND status = 'completed' AND completed_at < ").bind(v);
    }
    if f.without_finished_retry {
        q.push(
            " AND NOT EXISTS (SELECT 1 FROM operation_runs n WHERE n.retry_of = operation_runs.id \
             AND n.status = 'completed')",
        );
    }
    if let Some(v) = &f.idempotency_key {
        q.push(" AND (context ->> 'idempotency_key') = ").bind(v);
    }
    if f.without_retry {
        q.push(" AND NOT EXISTS (SELECT 1 FROM operation_runs n WHERE n.retry_of = operation_runs.id)");
    }
    if let Some(v) = f.before {
        q.push(" AND id < ").bind(v);
    }
    Some(())
}

/// A page of stale candidates, by id; `None` when the query admits none.
/// The status is written as a literal so that the partial index of running
/// runs (ordered by id) can serve the page in every plan, generic ones
/// included.
pub(crate) fn select_stale_page(s: &StaleQuery) -> Option<Stmt> {
    let mut q = Stmt::new(format!("SELECT {STALE_COLUMNS} FROM operation_runs WHERE status = '{}'", s.status.as_str()));
    match s.status {
        RunStatus::Running => q.push(" AND lease_expires_at < ").bind(s.cutoff),
        _ => q.push(" AND queued_at < ").bind(s.cutoff),
    };
    if let Some(v) = &s.operation {
        q.push(" AND operation = ").bind(v);
    }
    if let Some(v) = &s.workspace_id {
        q.push(" AND workspace_id = ").bind(v);
    }
    match s.within.as_deref() {
        None => {}
        Some([]) => return None,
        Some(within) => {
            q.push(" AND workspace_id IN ").bind_list(within);
        }
    }
    if let Some(v) = s.after {
        q.push(" AND id > ").bind(v);
    }
    q.push(" ORDER BY id LIMIT ").bind(i64::from(s.limit.clamp(1, MAX_PAGE)));
    Some(q)
}

fn push_write(q: &mut Stmt, c: &RunWrite, now: DateTime<Utc>) {
    q.push("updated_at = ").bind(now);
    if let Some(v) = c.status {
        q.push(", status = ").bind(v.as_str());
    }
    if let Some(v) = c.outcome {
        q.push(", outcome = ").bind(v.as_str());
    }
    if let Some(v) = &c.reason_code {
        q.push(", reason_code = ").bind(v.clone());
    }
    if let Some(v) = &c.failure_summary {
        q.push(", failure_summary = ").bind(serde_json::to_value(v).unwrap_or_default());
    }
    if let Some(v) = &c.checkpoint {
        q.push(", checkpoint = ").bind(v.clone());
    }
    if c.next_attempt {
        q.push(", attempt = attempt + 1");
    }
    if c.next_snooze {
        q.push(", snoozes = snoozes + 1");
    }
    if let Some(v) = &c.lease_owner {
        q.push(", lease_owner = ").bind(v.clone());
    }
    if let Some(v) = c.lease_expires_at {
        q.push(", lease_expires_at = ").bind(v);
    }
    if let Some(l) = &c.lease_ends {
        q.push(", lease_expires_at = ");
        if l.by_operation.is_empty() {
            q.bind(l.otherwise);
        } else {
            q.push("CASE operation");
            for (op, at) in &l.by_operation {
                q.push(" WHEN ").bind(op).push(" THEN ").bind(*at);
            }
            q.push(" ELSE ").bind(l.otherwise).push(" END");
        }
    }
    if let Some(v) = c.heartbeat_at {
        q.push(", heartbeat_at = ").bind(v);
    }
    if let Some(v) = c.cancel_requested_at {
        q.push(", cancel_requested_at = COALESCE(cancel_requested_at, ").bind(v).push(")");
    }
    if let Some(v) = c.queued_at {
        q.push(", queued_at = ").bind(v);
    }
    if let Some(v) = c.repushed_at {
        q.push(", repushed_at = ").bind(v);
    }
    if let Some(v) = c.available_at {
        q.push(", available_at = ").bind(v);
    }
    if let Some(v) = c.started_at {
        q.push(", started_at = COALESCE(started_at, ").bind(v).push(")");
    }
    if let Some(v) = c.completed_at {
        q.push(", completed_at = ").bind(v);
    }
}

/// The guard of an update by id. Its status test is written so that no
/// index can serve it (`status || ''`): the rows are named by id and the
/// primary key must find them. With a plain `status = $n`, a planner whose
/// statistics lag a fast-growing table (seen on Postgres under `oprun
/// bench`) reads the whole partial index of queued runs — the backlog — for
/// every claim batch, and filters it by id: a claim whose cost grows with the
/// backlog.
fn push_guard(q: &mut Stmt, g: &Guard) {
    q.push(" AND (status || '') = ").bind(g.from.as_str());
    if let Some(owner) = &g.lease_owner {
        q.push(" AND lease_owner = ").bind(owner);
    }
    if let Some(attempt) = g.attempt {
        q.push(" AND attempt = ").bind(attempt);
    }
    if let Some(t) = g.lease_expired_before {
        q.push(" AND lease_expires_at < ").bind(t);
    }
}

pub(crate) fn corrupt(id: &str, field: &'static str, problem: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { id: id.to_string(), field, problem: problem.to_string() }
}

pub(crate) fn parse_text<T: std::str::FromStr>(id: &str, field: &'static str, v: String) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| corrupt(id, field, e))
}

/// A run as stored.
pub(crate) fn count_from_row(row: &impl Cols) -> Result<RunCount, StoreError> {
    let ws = row.text("workspace_id")?;
    Ok(RunCount {
        status: parse_text(&ws, "status", row.text("status")?)?,
        outcome: parse_text(&ws, "outcome", row.text("outcome")?)?,
        count: u64::try_from(row.bigint("n")?).unwrap_or(0),
        workspace_id: ws,
    })
}

pub(crate) fn run_from_row(row: &impl Cols) -> Result<OperationRun, StoreError> {
    let id = row.uuid("id")?;
    let ids = id.to_string();
    Ok(OperationRun {
        id,
        operation: row.text("operation")?,
        workspace_id: row.text("workspace_id")?,
        environment_id: row.opt_text("environment_id")?,
        target_type: row.opt_text("target_type")?,
        target_id: row.opt_text("target_id")?,
        initiator: Initiator {
            kind: parse_text(&ids, "actor_kind", row.text("actor_kind")?)?,
            id: row.text("actor_id")?,
        },
        source_surface: parse_text(&ids, "source_surface", row.text("source_surface")?)?,
        context: row.json("context")?,
        params: row.json("params")?,
        dedup_key: row.opt_text("dedup_key")?,
        status: parse_text(&ids, "status", row.text("status")?)?,
        outcome: parse_text(&ids, "outcome", row.text("outcome")?)?,
        reason_code: row.opt_text("reason_code")?,
        failure_summary: serde_json::from_value(row.json("failure_summary")?)
            .map_err(|e| corrupt(&ids, "failure_summary", e))?,
        summary_counts: SummaryCounts::from_json(&row.json("summary_counts")?)
            .map_err(|e| corrupt(&ids, "summary_counts", e))?,
        checkpoint: row.opt_json("checkpoint")?,
        attempt: row.int("attempt")?,
        max_attempts: row.int("max_attempts")?,
        snoozes: row.int("snoozes")?,
        refusals: row.int("refusals")?,
        last_refused_at: row.opt_time("last_refused_at")?,
        refusal_key: row.opt_text("refusal_key")?,
        retry_of: row.opt_uuid("retry_of")?,
        lease_owner: row.opt_text("lease_owner")?,
        lease_expires_at: row.opt_time("lease_expires_at")?,
        heartbeat_at: row.opt_time("heartbeat_at")?,
        cancel_requested_at: row.opt_time("cancel_requested_at")?,
        queued_at: row.time("queued_at")?,
        repushed_at: row.opt_time("repushed_at")?,
        created_at: row.time("created_at")?,
        started_at: row.opt_time("started_at")?,
        completed_at: row.opt_time("completed_at")?,
        updated_at: row.time("updated_at")?,
        available_at: row.time("available_at")?,
    })
}

/// An audit row as stored.
pub(crate) fn audit_from_row(row: &impl Cols) -> Result<AuditEvent, StoreError> {
    let id = row.bigint("id")?;
    let ids = format!("audit:{id}");
    let status = |col: &'static str| -> Result<Option<RunStatus>, StoreError> {
        row.opt_text(col)?.map(|s| parse_text(&ids, col, s)).transpose()
    };
    Ok(AuditEvent {
        id,
        entry: AuditEntry {
            at: row.time("at")?,
            actor: Initiator {
                kind: parse_text(&ids, "actor_kind", row.text("actor_kind")?)?,
                id: row.text("actor_id")?,
            },
            action: row.text("action")?,
            run_id: row.opt_uuid("run_id")?,
            workspace_id: row.opt_text("workspace_id")?,
            environment_id: row.opt_text("environment_id")?,
            from_status: status("from_status")?,
            to_status: status("to_status")?,
            outcome: row.opt_text("outcome")?.map(|s| parse_text(&ids, "outcome", s)).transpose()?,
            reason_code: row.opt_text("reason_code")?,
            details: row.json("details")?,
        },
    })
}

/// The audit row of a run a write returned (at least the columns of
/// [`BRIEF_COLUMNS`]), from `audit`'s template.
pub(crate) fn audit_for_written(row: &impl Cols, audit: &AuditEntry, guard: &Guard) -> Result<AuditEntry, StoreError> {
    let id = row.uuid("id")?;
    let ids = id.to_string();
    let entry = audit.for_written(
        id,
        row.text("workspace_id")?,
        row.opt_text("environment_id")?,
        parse_text(&ids, "status", row.text("status")?)?,
        parse_text(&ids, "outcome", row.text("outcome")?)?,
        row.opt_text("reason_code")?,
    );
    Ok(entry.from(guard.from))
}

/// A stale candidate as read.
pub(crate) fn stale_from_row(row: &impl Cols) -> Result<StaleRun, StoreError> {
    Ok(StaleRun {
        id: row.uuid("id")?,
        operation: row.text("operation")?,
        workspace_id: row.text("workspace_id")?,
        attempt: row.int("attempt")?,
        max_attempts: row.int("max_attempts")?,
        cancel_requested_at: row.opt_time("cancel_requested_at")?,
        lease_expires_at: row.opt_time("lease_expires_at")?,
        queued_at: row.time("queued_at")?,
        repushed_at: row.opt_time("repushed_at")?,
    })
}

/// A run a brief write wrote.
pub(crate) fn written_from_row(row: &impl Cols) -> Result<Written, StoreError> {
    Ok(Written { id: row.uuid("id")?, attempt: row.int("attempt")? })
}
