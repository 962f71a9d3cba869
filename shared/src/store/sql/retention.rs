//! The statements of operations at scale: retention's pages (runs with
//! their audit rows, audit rows of no run, ticks), the audit log's reads,
//! and the collapsed refusals of scheduled dispatches.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::runs::{self, RUN_COLUMNS};
use super::{Backend, Cols, Stmt};
use crate::audit::AuditEvent;
use crate::lifecycle::RunOutcome;
use crate::run::OperationRun;
use crate::store::{AuditFilter, MAX_PAGE, PrunedPage, StoreError};

/// The completed runs of `outcome` that completed before `before` and that
/// no run retries (a run another run's `retry_of` points to is kept while
/// that run is), oldest first: one page of retention. The outcome and age
/// index (migration 0008) serves it as a range scan that stops after the
/// page.
fn prunable(outcome: RunOutcome, before: DateTime<Utc>, from: Option<DateTime<Utc>>, limit: i64) -> Stmt {
    let mut q = Stmt::new(
        "SELECT r.id AS id, r.completed_at AS completed_at FROM operation_runs r \
         WHERE r.status = 'completed' AND r.outcome = $1 AND r.completed_at < $2 \
         AND NOT EXISTS (SELECT 1 FROM operation_runs n WHERE n.retry_of = r.id)",
    )
    .arg(outcome.as_str())
    .arg(before);
    // The pass's cursor: the index entries of the pages already deleted are
    // dead until vacuumed; starting after them keeps each page its own size.
    if let Some(from) = from {
        q.push(" AND r.completed_at >= ").bind(from);
    }
    q.push(" ORDER BY r.completed_at LIMIT ").bind(limit);
    q
}

/// How many rows `page` returns, as one row `n`.
pub(crate) fn count_of(page: Stmt) -> Stmt {
    Stmt { sql: format!("SELECT COUNT(*) AS n FROM ({}) p", page.sql), args: page.args }
}

/// The `n` of a [`count_of`] statement's row.
pub(crate) fn read_count(rows: &[impl Cols]) -> Result<u64, StoreError> {
    Ok(rows.first().map(|r| r.bigint("n")).transpose()?.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

/// Audit rows of no run (administrative acts, refused actions) older than
/// `before`, at most `limit`.
fn prunable_audit(before: DateTime<Utc>, limit: i64) -> Stmt {
    Stmt::new("SELECT id FROM audit_events WHERE at < $1 AND run_id IS NULL ORDER BY at LIMIT $2")
        .arg(before)
        .arg(limit)
}

/// Delete one page of runs by id, their audit rows first (in the same
/// transaction: a run's audit rows never go before it). Returns (runs,
/// audit rows) deleted.
pub(crate) async fn prune_runs<B: Backend>(
    conn: &mut B::Connection,
    outcome: RunOutcome,
    before: DateTime<Utc>,
    from: Option<DateTime<Utc>>,
    limit: u32,
) -> Result<PrunedPage, StoreError> {
    let limit = i64::from(limit.clamp(1, MAX_PAGE));
    let rows = B::fetch(&mut *conn, prunable(outcome, before, from, limit)).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.uuid("id")).collect::<Result<_, _>>()?;
    let through = rows.iter().map(|r| r.time("completed_at")).collect::<Result<Vec<_>, _>>()?.into_iter().max();
    if ids.is_empty() {
        return Ok(PrunedPage::default());
    }
    let mut audit = Stmt::new("DELETE FROM audit_events WHERE run_id IN (SELECT id FROM operation_runs WHERE");
    B::push_ids(&mut audit, &ids);
    audit.push(")");
    let audit_rows = B::execute(&mut *conn, audit).await?;
    // A run that a retry written since the page was read points to stays.
    let mut del = Stmt::new("DELETE FROM operation_runs WHERE");
    B::push_ids(&mut del, &ids);
    del.push(" AND NOT EXISTS (SELECT 1 FROM operation_runs n WHERE n.retry_of = operation_runs.id)");
    let runs = B::execute(&mut *conn, del).await?;
    Ok(PrunedPage { runs, audit_rows, found: ids.len() as u64, through })
}

/// How many runs one outcome's window would prune (at most `cap`).
pub(crate) async fn count_runs<B: Backend>(
    conn: &mut B::Connection,
    outcome: RunOutcome,
    before: DateTime<Utc>,
    cap: u64,
) -> Result<u64, StoreError> {
    let cap = i64::try_from(cap).unwrap_or(i64::MAX);
    read_count(&B::fetch(conn, count_of(prunable(outcome, before, None, cap))).await?)
}

/// Delete (or, dry, count) one page of audit rows of no run older than
/// `before`.
pub(crate) async fn prune_audit<B: Backend>(
    conn: &mut B::Connection,
    before: DateTime<Utc>,
    limit: u32,
    dry_run: bool,
) -> Result<u64, StoreError> {
    let page = prunable_audit(before, i64::from(limit.clamp(1, MAX_PAGE)));
    if dry_run {
        return read_count(&B::fetch(conn, count_of(page)).await?);
    }
    let del = Stmt { sql: format!("DELETE FROM audit_events WHERE id IN ({})", page.sql), args: page.args };
    Ok(B::execute(conn, del).await?)
}

/// Ticks decided before `before`, oldest first, at most `limit`; never a
/// schedule's newest tick (where its next pass starts) nor one still
/// claimed.
const PRUNABLE_TICKS: &str = "SELECT t.schedule, t.scheduled_for FROM schedule_ticks t \
    WHERE t.decided_at < $1 AND t.decision <> 'claimed' \
    AND t.scheduled_for < (SELECT MAX(m.scheduled_for) FROM schedule_ticks m WHERE m.schedule = t.schedule) \
    ORDER BY t.decided_at LIMIT $2";

/// Delete (or, dry, count) one page of old ticks.
pub(crate) fn prune_ticks(before: DateTime<Utc>, limit: u32, dry_run: bool) -> Stmt {
    let page = Stmt::new(PRUNABLE_TICKS).arg(before).arg(i64::from(limit.clamp(1, MAX_PAGE)));
    if dry_run {
        return count_of(page);
    }
    Stmt {
        sql: format!("DELETE FROM schedule_ticks WHERE (schedule, scheduled_for) IN ({})", page.sql),
        args: page.args,
    }
}

/// A page of the audit log, newest first; `None` when the filter admits none.
pub(crate) fn list_audit(f: &AuditFilter) -> Option<Stmt> {
    let mut q = Stmt::new("SELECT * FROM audit_events WHERE 1 = 1");
    if let Some(ws) = &f.visible_workspaces {
        if ws.is_empty() {
            return None;
        }
        q.push(" AND (workspace_id IN ").bind_list(ws);
        q.push(if f.include_unscoped { " OR workspace_id IS NULL)" } else { ")" });
    }
    if let Some(v) = &f.actor {
        q.push(" AND actor_id = ").bind(v);
    }
    if let Some(v) = &f.action {
        match v.strip_suffix('*') {
            Some(prefix) => q.push(" AND action LIKE ").bind(format!("{}%", prefix.replace(['%', '_'], ""))),
            None => q.push(" AND action = ").bind(v),
        };
    }
    if f.administrative {
        q.push(" AND run_id IS NULL");
    }
    if let Some(v) = f.run_id {
        q.push(" AND run_id = ").bind(v);
    }
    if let Some(v) = f.since {
        q.push(" AND at >= ").bind(v);
    }
    if let Some(v) = f.before {
        q.push(" AND id < ").bind(v);
    }
    q.push(" ORDER BY id DESC LIMIT ").bind(i64::from(f.limit.clamp(1, MAX_PAGE)));
    Some(q)
}

/// Decode audit rows.
pub(crate) fn audit_rows(rows: &[impl Cols]) -> Result<Vec<AuditEvent>, StoreError> {
    rows.iter().map(runs::audit_from_row).collect()
}

/// Insert a refused scheduled dispatch's blocked run, or, when an open
/// refusal of the same schedule, scope and reason exists, count one more
/// refusal on it (its last time and message); the run as it is now.
pub(crate) fn upsert_refusal(run: &OperationRun) -> Stmt {
    let mut q = Stmt::new(format!(
        "INSERT INTO operation_runs ({RUN_COLUMNS}, refusals, last_refused_at, refusal_key) VALUES "
    ));
    let mut values = runs::run_values(run);
    values.push(run.refusals.into());
    values.push(run.last_refused_at.into());
    values.push(run.refusal_key.clone().into());
    q.bind_list(values);
    q.push(
        " ON CONFLICT (refusal_key, reason_code) WHERE refusal_key IS NOT NULL DO UPDATE SET \
         refusals = operation_runs.refusals + 1, last_refused_at = excluded.last_refused_at, \
         failure_summary = excluded.failure_summary, updated_at = excluded.updated_at RETURNING *",
    );
    q
}

/// Close the open refusals of `key` (the schedule fired there again).
pub(crate) fn close_refusals(key: &str, now: DateTime<Utc>) -> Stmt {
    Stmt::new("UPDATE operation_runs SET refusal_key = NULL, updated_at = $2 WHERE refusal_key = $1").arg(key).arg(now)
}
