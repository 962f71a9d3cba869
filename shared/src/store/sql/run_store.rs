//! [`RunStore`] over a [`Backend`]: transactions, chunking and the retry of a
//! dedup race around the queries of `runs.rs`.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::retention;
use super::runs::{self, BRIEF_COLUMNS, SELECT_ACTIVE_FOR_KEY, SELECT_AUDIT_FOR_RUN, SELECT_RUN};
use super::{Backend, Cols, SqlStore, Stmt};
use crate::audit::{AuditEntry, AuditEvent};
use crate::lifecycle::{RunOutcome, RunStatus};
use crate::run::OperationRun;
use crate::store::{
    AuditFilter, ClaimedReady, Guard, Inserted, PrunedPage, ReadyClaim, RunCount, RunFilter, RunStore, RunWrite,
    StaleQuery, StaleRun, StoreError, Update, Wakeups, Written,
};

/// Ids a statement names at most (SQLite binds one each).
const IDS_PER_STATEMENT: usize = 1000;

/// Audit rows an insert writes at most (12 binds a row, under both backends'
/// bind limits).
const AUDIT_PER_STATEMENT: usize = 2000;

/// Write `entries` on `conn`.
pub(crate) async fn insert_audit<B: Backend>(
    conn: &mut B::Connection,
    entries: &[AuditEntry],
) -> Result<(), StoreError> {
    for chunk in entries.chunks(AUDIT_PER_STATEMENT) {
        B::execute(&mut *conn, runs::insert_audit(chunk)).await?;
    }
    Ok(())
}

/// One guarded write inside a transaction on `conn`, with its audit rows;
/// the runs written.
async fn update_in<B: Backend>(
    conn: &mut B::Connection,
    ids: &[Uuid],
    guard: &Guard,
    write: &RunWrite,
    now: DateTime<Utc>,
    audit: Option<&AuditEntry>,
) -> Result<Vec<OperationRun>, StoreError> {
    let mut written = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        for row in B::write_audited(&mut *conn, chunk, guard, write, now, audit, "*").await? {
            written.push(runs::run_from_row(&row)?);
        }
    }
    if let Some(add) = write.counts_add.as_ref().filter(|c| !c.is_empty()) {
        // Counts merge in Rust, from the full row.
        for run in &mut written {
            let mut counts = run.summary_counts.clone();
            counts.merge(add);
            B::execute(&mut *conn, runs::update_counts(run.id, &counts)).await?;
            run.summary_counts = counts;
        }
    }
    Ok(written)
}

/// The scope keys with queued runs after `after`, at most `limit`.
async fn queued_scopes<B: Backend>(
    conn: &mut B::Connection,
    after: &str,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let rows = B::fetch(conn, runs::select_queued_scopes(after, limit)).await?;
    Ok(rows.iter().map(|r| r.text("k")).collect::<Result<_, _>>()?)
}

/// The scope key of a run (as [`runs::SCOPE_KEY`] computes it).
fn scope_key(run: &OperationRun) -> String {
    format!("{}/{}", run.workspace_id, run.environment_id.as_deref().unwrap_or(""))
}

/// A worker's wait for ready runs: this process's wake-ups and, where the
/// backend has them, other processes' notices.
struct Waiter<B: Backend> {
    local: tokio::sync::watch::Receiver<u64>,
    remote: Option<B::Listener>,
}

#[async_trait]
impl<B: Backend> Wakeups for Waiter<B> {
    fn arm(&mut self) {
        self.local.borrow_and_update();
    }

    async fn wait(&mut self, max: std::time::Duration) {
        let local = async {
            if self.local.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let remote = async {
            match self.remote.as_mut() {
                // A lost connection reconnects on the next call; until then
                // the poll stands in.
                Some(l) => {
                    if B::next_ready(l).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = local => {}
            () = remote => {}
            () = tokio::time::sleep(max) => {}
        }
    }
}

/// What a dispatch inside the caller's transaction did.
#[derive(Debug, Clone, PartialEq)]
pub enum TxDispatch {
    /// Written (or deduplicated) in the caller's transaction: it exists if
    /// and only if that transaction commits.
    Dispatched(Box<crate::service::Dispatched>),
    /// Authorization said no; nothing was written.
    Denied {
        /// Why.
        reason: crate::reason::ReasonCode,
        /// In words.
        message: String,
    },
}

impl<B: Backend> SqlStore<B> {
    /// Dispatch `req` inside the caller's own transaction on `conn` (River's
    /// `InsertTx`, Oban's `Multi`): authorized against current access truth
    /// (read through `authorizer`, outside the transaction), validated, and
    /// the run and its audit row written on `conn`, so that the run exists
    /// if and only if the caller commits. On Postgres the workers' wake-up
    /// (`NOTIFY`) is sent in the same transaction, so it arrives at commit;
    /// on SQLite they find the run at their next poll. A run whose dedup key
    /// an active run holds is not written: that run is returned.
    pub async fn dispatch_in(
        service: &crate::OperationRunService,
        authorizer: &crate::Authorizer,
        conn: &mut B::Connection,
        req: crate::DispatchRequest,
    ) -> Result<TxDispatch, crate::ServiceError> {
        let (run, audit) = service.prepare_dispatch(&req)?;
        let decision = authorizer.authorize_dispatch(&req.initiator.id, &req.operation, &req.scope).await?;
        if let crate::Decision::Denied { reason, message } = decision {
            return Ok(TxDispatch::Denied { reason, message });
        }
        if let Some(row) = B::fetch(&mut *conn, runs::insert_runs([&run])).await.map_err(StoreError::from)?.first() {
            let written = runs::run_from_row(row)?;
            insert_audit::<B>(&mut *conn, &[audit.for_run(&written)]).await?;
            B::notify_in(&mut *conn).await?;
            return Ok(TxDispatch::Dispatched(Box::new(crate::service::Dispatched {
                run: written,
                deduplicated: false,
            })));
        }
        let key = run.dedup_key.clone().unwrap_or_default();
        let existing =
            B::fetch(&mut *conn, Stmt::new(SELECT_ACTIVE_FOR_KEY).arg(key)).await.map_err(StoreError::from)?;
        match existing.first() {
            Some(row) => {
                let run = runs::run_from_row(row)?;
                Ok(TxDispatch::Dispatched(Box::new(crate::service::Dispatched { run, deduplicated: true })))
            }
            None => Err(StoreError::DedupContended { tries: 1 }.into()),
        }
    }

    /// The first run of `stmt`'s rows, decoded.
    async fn one_run(&self, stmt: Stmt) -> Result<Option<OperationRun>, StoreError> {
        self.fetch(stmt).await?.first().map(runs::run_from_row).transpose()
    }
}

#[async_trait]
impl<B: Backend> RunStore for SqlStore<B> {
    fn backend(&self) -> &'static str {
        B::BACKEND
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        B::migrate(&self.pool).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.execute(Stmt::new("SELECT 1")).await?;
        Ok(())
    }

    async fn insert_run(&self, run: &OperationRun, audit: &[AuditEntry]) -> Result<Inserted, StoreError> {
        // A conflicting active run may complete between our conflict and our
        // read of it; then the key is free and we try again.
        const TRIES: usize = 16;
        for _ in 0..TRIES {
            let mut tx = B::begin_write(&self.pool).await?;
            if let Some(row) = B::fetch(&mut tx, runs::insert_runs([run])).await?.first() {
                let written = runs::run_from_row(row)?;
                let entries: Vec<AuditEntry> =
                    audit.iter().map(|a| if a.run_id.is_none() { a.for_run(&written) } else { a.clone() }).collect();
                insert_audit::<B>(&mut tx, &entries).await?;
                tx.commit().await?;
                return Ok(Inserted::New(written));
            }
            let key = run.dedup_key.clone().unwrap_or_default();
            let existing = B::fetch(&mut tx, Stmt::new(SELECT_ACTIVE_FOR_KEY).arg(key)).await?;
            tx.rollback().await?;
            if let Some(row) = existing.first() {
                return Ok(Inserted::Existing(runs::run_from_row(row)?));
            }
        }
        Err(StoreError::DedupContended { tries: TRIES })
    }

    async fn update_runs(
        &self,
        ids: &[Uuid],
        guard: &Guard,
        write: &RunWrite,
        now: DateTime<Utc>,
        audit: Option<&AuditEntry>,
    ) -> Result<Vec<OperationRun>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = B::begin_write(&self.pool).await?;
        let written = update_in::<B>(&mut tx, ids, guard, write, now, audit).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn update_runs_brief(
        &self,
        ids: &[Uuid],
        guard: &Guard,
        write: &RunWrite,
        now: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> Result<Vec<Written>, StoreError> {
        if write.adds_counts() {
            // Counts merge in Rust, from the full row.
            let runs = self.update_runs(ids, guard, write, now, Some(audit)).await?;
            return Ok(runs.iter().map(|r| Written { id: r.id, attempt: r.attempt }).collect());
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = B::begin_write(&self.pool).await?;
        let mut written = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            for row in B::write_audited(&mut tx, chunk, guard, write, now, Some(audit), BRIEF_COLUMNS).await? {
                written.push(runs::written_from_row(&row)?);
            }
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn update_batch(&self, updates: &[Update], now: DateTime<Utc>) -> Result<Vec<Vec<OperationRun>>, StoreError> {
        if updates.iter().all(|u| u.ids.is_empty()) {
            return Ok(updates.iter().map(|_| Vec::new()).collect());
        }
        let mut tx = B::begin_write(&self.pool).await?;
        let mut out = Vec::with_capacity(updates.len());
        for u in updates {
            if u.ids.is_empty() {
                out.push(Vec::new());
                continue;
            }
            out.push(update_in::<B>(&mut tx, &u.ids, &u.guard, &u.write, now, u.audit.as_ref()).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn insert_runs(&self, runs: &[(OperationRun, AuditEntry)]) -> Result<Vec<Inserted>, StoreError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = B::begin_write(&self.pool).await?;
        let mut written = HashMap::with_capacity(runs.len());
        for chunk in runs.chunks(IDS_PER_STATEMENT) {
            for run in B::insert_new_runs(&mut tx, chunk).await? {
                written.insert(run.id, run);
            }
        }
        tx.commit().await?;
        let mut out = Vec::with_capacity(runs.len());
        for (run, audit) in runs {
            match written.remove(&run.id) {
                Some(w) => out.push(Inserted::New(w)),
                // Its dedup key was held: the one-run path reads the holder
                // (and retries if the holder finished meanwhile).
                None => out.push(self.insert_run(run, std::slice::from_ref(audit)).await?),
            }
        }
        Ok(out)
    }

    async fn get_runs(&self, ids: &[Uuid]) -> Result<Vec<OperationRun>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            for row in self.fetch(runs::select_runs::<B>(chunk)).await? {
                out.push(runs::run_from_row(&row)?);
            }
        }
        Ok(out)
    }

    async fn get_run(&self, id: Uuid) -> Result<Option<OperationRun>, StoreError> {
        self.one_run(Stmt::new(SELECT_RUN).arg(id)).await
    }

    async fn active_run_for_key(&self, dedup_key: &str) -> Result<Option<OperationRun>, StoreError> {
        self.one_run(Stmt::new(SELECT_ACTIVE_FOR_KEY).arg(dedup_key)).await
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<OperationRun>, StoreError> {
        let Some(stmt) = runs::list_runs(filter) else { return Ok(Vec::new()) };
        self.fetch(stmt).await?.iter().map(runs::run_from_row).collect()
    }

    async fn count_runs(&self, filter: &RunFilter) -> Result<Vec<RunCount>, StoreError> {
        let Some(stmt) = runs::count_runs(filter) else { return Ok(Vec::new()) };
        self.fetch(stmt).await?.iter().map(runs::count_from_row).collect()
    }

    async fn find_stale(&self, query: &StaleQuery) -> Result<Vec<StaleRun>, StoreError> {
        let Some(stmt) = runs::select_stale_page(query) else { return Ok(Vec::new()) };
        let mut tx = self.pool.begin().await?;
        B::plan_stale_page(&mut tx).await?;
        let rows = B::fetch(&mut tx, stmt).await?;
        tx.commit().await?;
        rows.iter().map(runs::stale_from_row).collect()
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_audit::<B>(&mut conn, std::slice::from_ref(entry)).await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let Some(stmt) = retention::list_audit(filter) else { return Ok(Vec::new()) };
        retention::audit_rows(&self.fetch(stmt).await?)
    }

    async fn prune_runs(
        &self,
        outcome: RunOutcome,
        before: DateTime<Utc>,
        from: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<PrunedPage, StoreError> {
        let mut tx = B::begin_write(&self.pool).await?;
        let page = retention::prune_runs::<B>(&mut tx, outcome, before, from, limit).await?;
        tx.commit().await?;
        Ok(page)
    }

    async fn count_prunable_runs(
        &self,
        outcome: RunOutcome,
        before: DateTime<Utc>,
        cap: u64,
    ) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        retention::count_runs::<B>(&mut conn, outcome, before, cap).await
    }

    async fn prune_audit(&self, before: DateTime<Utc>, limit: u32, dry_run: bool) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        retention::prune_audit::<B>(&mut conn, before, limit, dry_run).await
    }

    async fn record_refusal(&self, run: &OperationRun, audit: &AuditEntry) -> Result<(OperationRun, bool), StoreError> {
        let mut tx = B::begin_write(&self.pool).await?;
        let rows = B::fetch(&mut tx, retention::upsert_refusal(run)).await?;
        let Some(row) = rows.first() else {
            tx.rollback().await?;
            return Err(StoreError::Corrupt {
                id: run.id.to_string(),
                field: "refusal_key",
                problem: "the refusal upsert returned no row".into(),
            });
        };
        let written = runs::run_from_row(row)?;
        let new = written.id == run.id;
        if new {
            insert_audit::<B>(&mut tx, &[audit.for_run(&written)]).await?;
        }
        tx.commit().await?;
        Ok((written, new))
    }

    async fn close_refusals(&self, key: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(self.execute(retention::close_refusals(key, now)).await?)
    }

    async fn audit_for_run(&self, run_id: Uuid) -> Result<Vec<AuditEvent>, StoreError> {
        self.fetch(Stmt::new(SELECT_AUDIT_FOR_RUN).arg(run_id)).await?.iter().map(runs::audit_from_row).collect()
    }

    async fn claim_ready(&self, c: &ReadyClaim) -> Result<ClaimedReady, StoreError> {
        if c.limit == 0 {
            return Ok(ClaimedReady::default());
        }
        let limit = i64::from(c.limit);
        let mut tx = B::begin_write(&self.pool).await?;
        // Round robin: the scopes after the last one served, and from the
        // first again once past the last.
        let mut scopes = queued_scopes::<B>(&mut tx, c.after_scope.as_deref().unwrap_or(""), limit).await?;
        if scopes.is_empty() && c.after_scope.is_some() {
            scopes = queued_scopes::<B>(&mut tx, "", limit).await?;
        }
        if scopes.is_empty() {
            tx.rollback().await?;
            return Ok(ClaimedReady::default());
        }
        let n = i64::try_from(scopes.len()).unwrap_or(limit);
        let per_scope = (limit + n - 1) / n;
        let ids = B::pick_ready(&mut tx, &scopes, c.now, per_scope, limit, &c.skip, c.only.as_deref()).await?;
        let runs =
            update_in::<B>(&mut tx, &ids, &Guard::from(RunStatus::Queued), &c.write, c.now, Some(&c.audit)).await?;
        tx.commit().await?;
        let last_scope = runs.iter().map(scope_key).max();
        Ok(ClaimedReady { runs, last_scope })
    }

    async fn count_ready(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let rows = self.fetch(runs::count_ready(now)).await?;
        let n = rows.first().map(|r| r.bigint("n")).transpose()?.unwrap_or(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn wake_workers(&self) -> Result<(), StoreError> {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
        B::notify_ready(&self.pool).await
    }

    async fn wakeups(&self) -> Result<Box<dyn Wakeups>, StoreError> {
        let remote = B::listen_ready(&self.pool).await?;
        Ok(Box::new(Waiter::<B> { local: self.wake.subscribe(), remote }))
    }
}
