//! The SQL both stores share. Postgres and SQLite accept the same statements
//! here (`$N` placeholders, `RETURNING`, partial-index upserts); the macro
//! stamps the one implementation out per backend so that each is checked
//! against its own driver's types (uuid, timestamptz and jsonb on Postgres;
//! blob, RFC 3339 text and JSON text on SQLite).

/// `id IN (...)` with one bind per id, for SQLite (which has no arrays).
/// Postgres binds one `uuid[]` instead: see `store::postgres`.
macro_rules! push_ids_as_list {
    ($db:ty) => {
        fn push_ids(q: &mut sqlx::QueryBuilder<$db>, ids: &[uuid::Uuid]) {
            q.push(" id IN (");
            let mut sep = q.separated(", ");
            for id in ids {
                sep.push_bind(*id);
            }
            sep.push_unseparated(")");
        }
    };
}

pub(super) use push_ids_as_list;

/// No plan settings for a stale page (SQLite: its planner reads the seeded
/// statistics, see `worker::queue`). Postgres sets some: see `store::postgres`.
macro_rules! stale_page_plan_as_is {
    ($db:ty) => {
        async fn stale_page_plan(_: &mut <$db as sqlx::Database>::Connection) -> Result<(), sqlx::Error> {
            Ok(())
        }
    };
}

pub(super) use stale_page_plan_as_is;

/// A guarded write and its audit rows as two statements, for SQLite (which
/// has no data-modifying `WITH`): the `UPDATE … RETURNING`, then one audit
/// row per run written, filled in from what it returned. `returning` must
/// name the run's id, workspace, environment, status, outcome and reason.
/// Postgres does both in one statement: see `store::postgres`.
macro_rules! write_audited_in_two_statements {
    ($db:ty, $row:ty) => {
        async fn write_audited(
            conn: &mut <$db as sqlx::Database>::Connection,
            ids: &[uuid::Uuid],
            guard: &crate::store::Guard,
            change: &crate::store::RunWrite,
            now: chrono::DateTime<chrono::Utc>,
            audit: Option<&crate::audit::AuditEntry>,
            returning: &str,
        ) -> Result<Vec<$row>, crate::store::StoreError> {
            use sqlx::Row;
            let mut q = sqlx::QueryBuilder::<$db>::new("");
            guarded_update(&mut q, ids, guard, change, now);
            q.push(format!(" RETURNING {returning}"));
            let rows = q.build().fetch_all(&mut *conn).await?;
            if let Some(audit) = audit {
                let mut entries = Vec::with_capacity(rows.len());
                for row in &rows {
                    let id: uuid::Uuid = row.try_get("id")?;
                    let ids = id.to_string();
                    let entry = audit.for_written(
                        id,
                        row.try_get("workspace_id")?,
                        row.try_get("environment_id")?,
                        parse_text(&ids, "status", row.try_get("status")?)?,
                        parse_text(&ids, "outcome", row.try_get("outcome")?)?,
                        row.try_get("reason_code")?,
                    );
                    entries.push(entry.from(guard.from));
                }
                insert_audit(&mut *conn, &entries).await?;
            }
            Ok(rows)
        }
    };
}

pub(super) use write_audited_in_two_statements;

/// New runs and their audit rows as two statements, for SQLite: the
/// multi-row `INSERT … RETURNING` (a run whose dedup key an active run holds
/// is left out), then each written run's audit row, filled in from it.
/// Returns the runs written. Postgres does both in one statement: see
/// `store::postgres`.
macro_rules! insert_runs_in_two_statements {
    ($db:ty) => {
        async fn insert_new_runs(
            conn: &mut <$db as sqlx::Database>::Connection,
            chunk: &[(crate::run::OperationRun, crate::audit::AuditEntry)],
        ) -> Result<Vec<crate::run::OperationRun>, crate::store::StoreError> {
            use crate::store::sql::{ACTIVE_KEYED, RUN_COLUMNS};
            // 31 binds a row: at most 1,000 rows a statement.
            let mut q = sqlx::QueryBuilder::<$db>::new(format!("INSERT INTO operation_runs ({RUN_COLUMNS}) VALUES "));
            for (i, (run, _)) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.push("(");
                let mut b = q.separated(", ");
                push_run(&mut b, run);
                b.push_unseparated(")");
            }
            q.push(format!(" ON CONFLICT (dedup_key) WHERE {ACTIVE_KEYED} DO NOTHING RETURNING *"));
            let audit_of: std::collections::HashMap<uuid::Uuid, &crate::audit::AuditEntry> =
                chunk.iter().map(|(r, a)| (r.id, a)).collect();
            let mut written = Vec::with_capacity(chunk.len());
            let mut entries = Vec::with_capacity(chunk.len());
            for row in q.build().fetch_all(&mut *conn).await? {
                let run = run_from_row(&row)?;
                if let Some(a) = audit_of.get(&run.id) {
                    entries.push(a.for_run(&run));
                }
                written.push(run);
            }
            insert_audit(&mut *conn, &entries).await?;
            Ok(written)
        }
    };
}

pub(super) use insert_runs_in_two_statements;

/// Every column of `operation_runs`, in insert order.
pub(super) const RUN_COLUMNS: &str = "id, operation, workspace_id, environment_id, target_type, target_id, \
    actor_kind, actor_id, source_surface, context, params, dedup_key, status, outcome, reason_code, \
    failure_summary, summary_counts, checkpoint, attempt, max_attempts, retry_of, lease_owner, \
    lease_expires_at, heartbeat_at, cancel_requested_at, queued_at, repushed_at, created_at, started_at, \
    completed_at, updated_at";

pub(super) const AUDIT_COLUMNS: &str = "at, actor_kind, actor_id, action, run_id, workspace_id, environment_id, \
    from_status, to_status, outcome, reason_code, details";

/// What a brief write returns of each run: enough for its audit row.
pub(super) const BRIEF_COLUMNS: &str = "id, attempt, workspace_id, environment_id, status, outcome, reason_code";

/// What the reconciler reads of a stale candidate (`StaleRun`).
pub(super) const STALE_COLUMNS: &str =
    "id, operation, workspace_id, attempt, max_attempts, cancel_requested_at, lease_expires_at, queued_at, repushed_at";

/// The predicate of the one-active-run-per-dedup-key index (migration 0005),
/// which an upsert's `ON CONFLICT (dedup_key) WHERE …` must name.
pub(super) const ACTIVE_KEYED: &str = "dedup_key IS NOT NULL AND status IN ('queued', 'running')";

macro_rules! impl_run_store {
    ($store:ident, $db:ty, $row:ty, $backend:literal, $migrator:expr) => {
        use async_trait::async_trait;
        use sqlx::types::Json;
        use sqlx::{QueryBuilder, Row};
        use uuid::Uuid;

        use crate::audit::{AuditEntry, AuditEvent};
        use crate::counts::SummaryCounts;
        use crate::run::{Initiator, OperationRun};
        use crate::store::sql::{ACTIVE_KEYED, AUDIT_COLUMNS, BRIEF_COLUMNS, RUN_COLUMNS, STALE_COLUMNS};
        use crate::store::{
            Guard, Inserted, MAX_PAGE, RunFilter, RunStore, RunWrite, StaleQuery, StaleRun, StoreError, Update, Written,
        };

        fn corrupt(id: &str, field: &'static str, problem: impl std::fmt::Display) -> StoreError {
            StoreError::Corrupt { id: id.to_string(), field, problem: problem.to_string() }
        }

        fn parse_text<T: std::str::FromStr>(id: &str, field: &'static str, v: String) -> Result<T, StoreError>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e| corrupt(id, field, e))
        }

        fn run_from_row(row: &$row) -> Result<OperationRun, StoreError> {
            let id: Uuid = row.try_get("id")?;
            let ids = id.to_string();
            let counts: Json<serde_json::Value> = row.try_get("summary_counts")?;
            let failures: Json<serde_json::Value> = row.try_get("failure_summary")?;
            let checkpoint: Option<Json<serde_json::Value>> = row.try_get("checkpoint")?;
            let context: Json<serde_json::Value> = row.try_get("context")?;
            let params: Json<serde_json::Value> = row.try_get("params")?;
            Ok(OperationRun {
                id,
                operation: row.try_get("operation")?,
                workspace_id: row.try_get("workspace_id")?,
                environment_id: row.try_get("environment_id")?,
                target_type: row.try_get("target_type")?,
                target_id: row.try_get("target_id")?,
                initiator: Initiator {
                    kind: parse_text(&ids, "actor_kind", row.try_get("actor_kind")?)?,
                    id: row.try_get("actor_id")?,
                },
                source_surface: parse_text(&ids, "source_surface", row.try_get("source_surface")?)?,
                context: context.0,
                params: params.0,
                dedup_key: row.try_get("dedup_key")?,
                status: parse_text(&ids, "status", row.try_get("status")?)?,
                outcome: parse_text(&ids, "outcome", row.try_get("outcome")?)?,
                reason_code: row.try_get("reason_code")?,
                failure_summary: serde_json::from_value(failures.0).map_err(|e| corrupt(&ids, "failure_summary", e))?,
                summary_counts: SummaryCounts::from_json(&counts.0).map_err(|e| corrupt(&ids, "summary_counts", e))?,
                checkpoint: checkpoint.map(|c| c.0),
                attempt: row.try_get("attempt")?,
                max_attempts: row.try_get("max_attempts")?,
                retry_of: row.try_get("retry_of")?,
                lease_owner: row.try_get("lease_owner")?,
                lease_expires_at: row.try_get("lease_expires_at")?,
                heartbeat_at: row.try_get("heartbeat_at")?,
                cancel_requested_at: row.try_get("cancel_requested_at")?,
                queued_at: row.try_get("queued_at")?,
                repushed_at: row.try_get("repushed_at")?,
                created_at: row.try_get("created_at")?,
                started_at: row.try_get("started_at")?,
                completed_at: row.try_get("completed_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        fn audit_from_row(row: &$row) -> Result<AuditEvent, StoreError> {
            let id: i64 = row.try_get("id")?;
            let ids = format!("audit:{id}");
            let details: Json<serde_json::Value> = row.try_get("details")?;
            let from_status: Option<String> = row.try_get("from_status")?;
            let to_status: Option<String> = row.try_get("to_status")?;
            let outcome: Option<String> = row.try_get("outcome")?;
            Ok(AuditEvent {
                id,
                entry: AuditEntry {
                    at: row.try_get("at")?,
                    actor: Initiator {
                        kind: parse_text(&ids, "actor_kind", row.try_get("actor_kind")?)?,
                        id: row.try_get("actor_id")?,
                    },
                    action: row.try_get("action")?,
                    run_id: row.try_get("run_id")?,
                    workspace_id: row.try_get("workspace_id")?,
                    environment_id: row.try_get("environment_id")?,
                    from_status: from_status.map(|s| parse_text(&ids, "from_status", s)).transpose()?,
                    to_status: to_status.map(|s| parse_text(&ids, "to_status", s)).transpose()?,
                    outcome: outcome.map(|s| parse_text(&ids, "outcome", s)).transpose()?,
                    reason_code: row.try_get("reason_code")?,
                    details: details.0,
                },
            })
        }

        async fn insert_audit(
            conn: &mut <$db as sqlx::Database>::Connection,
            entries: &[AuditEntry],
        ) -> Result<(), StoreError> {
            // Bounded by the bind limit of both backends: 12 binds a row.
            for chunk in entries.chunks(2000) {
                let mut q = QueryBuilder::<$db>::new(format!("INSERT INTO audit_events ({AUDIT_COLUMNS}) "));
                q.push_values(chunk, |mut b, e| {
                    b.push_bind(e.at)
                        .push_bind(e.actor.kind.as_str())
                        .push_bind(e.actor.id.clone())
                        .push_bind(e.action.clone())
                        .push_bind(e.run_id)
                        .push_bind(e.workspace_id.clone())
                        .push_bind(e.environment_id.clone())
                        .push_bind(e.from_status.map(|s| s.as_str()))
                        .push_bind(e.to_status.map(|s| s.as_str()))
                        .push_bind(e.outcome.map(|s| s.as_str()))
                        .push_bind(e.reason_code.clone())
                        .push_bind(Json(e.details.clone()));
                });
                q.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        fn push_run<Sep: std::fmt::Display>(b: &mut sqlx::query_builder::Separated<'_, $db, Sep>, run: &OperationRun) {
            b.push_bind(run.id)
                .push_bind(run.operation.clone())
                .push_bind(run.workspace_id.clone())
                .push_bind(run.environment_id.clone())
                .push_bind(run.target_type.clone())
                .push_bind(run.target_id.clone())
                .push_bind(run.initiator.kind.as_str())
                .push_bind(run.initiator.id.clone())
                .push_bind(run.source_surface.as_str())
                .push_bind(Json(run.context.clone()))
                .push_bind(Json(run.params.clone()))
                .push_bind(run.dedup_key.clone())
                .push_bind(run.status.as_str())
                .push_bind(run.outcome.as_str())
                .push_bind(run.reason_code.clone())
                .push_bind(Json(serde_json::to_value(&run.failure_summary).unwrap_or_default()))
                .push_bind(Json(run.summary_counts.to_json()))
                .push_bind(run.checkpoint.clone().map(Json))
                .push_bind(run.attempt)
                .push_bind(run.max_attempts)
                .push_bind(run.retry_of)
                .push_bind(run.lease_owner.clone())
                .push_bind(run.lease_expires_at)
                .push_bind(run.heartbeat_at)
                .push_bind(run.cancel_requested_at)
                .push_bind(run.queued_at)
                .push_bind(run.repushed_at)
                .push_bind(run.created_at)
                .push_bind(run.started_at)
                .push_bind(run.completed_at)
                .push_bind(run.updated_at);
        }

        /// `UPDATE operation_runs SET <change> WHERE <ids> <guard>` (no
        /// `RETURNING`): the guarded write of one chunk of runs.
        fn guarded_update(
            q: &mut QueryBuilder<$db>,
            ids: &[Uuid],
            guard: &Guard,
            change: &RunWrite,
            now: chrono::DateTime<chrono::Utc>,
        ) {
            q.push("UPDATE operation_runs SET ");
            push_change(q, change, now);
            q.push(" WHERE");
            push_ids(q, ids);
            push_guard(q, guard);
        }

        /// One guarded write inside `tx`, with its audit rows; returns the
        /// runs written.
        async fn update_in(
            tx: &mut <$db as sqlx::Database>::Connection,
            ids: &[Uuid],
            guard: &Guard,
            change: &RunWrite,
            now: chrono::DateTime<chrono::Utc>,
            audit: Option<&AuditEntry>,
        ) -> Result<Vec<OperationRun>, StoreError> {
            let mut written = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(1000) {
                for row in write_audited(&mut *tx, chunk, guard, change, now, audit, "*").await? {
                    written.push(run_from_row(&row)?);
                }
            }
            if let Some(add) = change.counts_add.as_ref().filter(|c| !c.is_empty()) {
                for run in &mut written {
                    let mut counts = run.summary_counts.clone();
                    counts.merge(add);
                    sqlx::query("UPDATE operation_runs SET summary_counts = $1 WHERE id = $2")
                        .bind(Json(counts.to_json()))
                        .bind(run.id)
                        .execute(&mut *tx)
                        .await?;
                    run.summary_counts = counts;
                }
            }
            Ok(written)
        }

        fn stale_from_row(row: &$row) -> Result<StaleRun, StoreError> {
            Ok(StaleRun {
                id: row.try_get("id")?,
                operation: row.try_get("operation")?,
                workspace_id: row.try_get("workspace_id")?,
                attempt: row.try_get("attempt")?,
                max_attempts: row.try_get("max_attempts")?,
                cancel_requested_at: row.try_get("cancel_requested_at")?,
                lease_expires_at: row.try_get("lease_expires_at")?,
                queued_at: row.try_get("queued_at")?,
                repushed_at: row.try_get("repushed_at")?,
            })
        }

        fn push_change(q: &mut QueryBuilder<$db>, c: &RunWrite, now: chrono::DateTime<chrono::Utc>) {
            q.push("updated_at = ").push_bind(now);
            if let Some(v) = c.status {
                q.push(", status = ").push_bind(v.as_str());
            }
            if let Some(v) = c.outcome {
                q.push(", outcome = ").push_bind(v.as_str());
            }
            if let Some(v) = &c.reason_code {
                q.push(", reason_code = ").push_bind(v.clone());
            }
            if let Some(v) = &c.failure_summary {
                q.push(", failure_summary = ").push_bind(Json(serde_json::to_value(v).unwrap_or_default()));
            }
            if let Some(v) = &c.checkpoint {
                q.push(", checkpoint = ").push_bind(v.clone().map(Json));
            }
            if c.next_attempt {
                q.push(", attempt = attempt + 1");
            }
            if let Some(v) = &c.lease_owner {
                q.push(", lease_owner = ").push_bind(v.clone());
            }
            if let Some(v) = c.lease_expires_at {
                q.push(", lease_expires_at = ").push_bind(v);
            }
            if let Some(l) = &c.lease_ends {
                q.push(", lease_expires_at = ");
                if l.by_operation.is_empty() {
                    q.push_bind(l.otherwise);
                } else {
                    q.push("CASE operation");
                    for (op, at) in &l.by_operation {
                        q.push(" WHEN ").push_bind(op.clone()).push(" THEN ").push_bind(*at);
                    }
                    q.push(" ELSE ").push_bind(l.otherwise).push(" END");
                }
            }
            if let Some(v) = c.heartbeat_at {
                q.push(", heartbeat_at = ").push_bind(v);
            }
            if let Some(v) = c.cancel_requested_at {
                q.push(", cancel_requested_at = COALESCE(cancel_requested_at, ").push_bind(v).push(")");
            }
            if let Some(v) = c.queued_at {
                q.push(", queued_at = ").push_bind(v);
            }
            if let Some(v) = c.repushed_at {
                q.push(", repushed_at = ").push_bind(v);
            }
            if let Some(v) = c.started_at {
                q.push(", started_at = COALESCE(started_at, ").push_bind(v).push(")");
            }
            if let Some(v) = c.completed_at {
                q.push(", completed_at = ").push_bind(v);
            }
        }

        /// The guard of an update by id. Its status test is written so that
        /// no index can serve it (`status || ''`): the rows are named by id
        /// and the primary key must find them. With a plain `status = $n`,
        /// a planner whose statistics lag a fast-growing table (seen on
        /// Postgres under `oprun bench`) reads the whole partial index of
        /// queued runs — the backlog — for every claim batch, and filters it
        /// by id: a claim whose cost grows with the backlog.
        fn push_guard(q: &mut QueryBuilder<$db>, g: &Guard) {
            q.push(" AND (status || '') = ").push_bind(g.from.as_str());
            if let Some(owner) = &g.lease_owner {
                q.push(" AND lease_owner = ").push_bind(owner.clone());
            }
            if let Some(attempt) = g.attempt {
                q.push(" AND attempt = ").push_bind(attempt);
            }
            if let Some(t) = g.lease_expired_before {
                q.push(" AND lease_expires_at < ").push_bind(t);
            }
            if let Some(t) = g.queued_before {
                q.push(" AND queued_at < ").push_bind(t);
            }
            if g.not_repushed {
                q.push(" AND repushed_at IS NULL");
            }
        }

        #[async_trait]
        impl RunStore for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn migrate(&self) -> Result<(), StoreError> {
                $migrator.run(&self.pool).await?;
                Ok(())
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn insert_run(&self, run: &OperationRun, audit: &[AuditEntry]) -> Result<Inserted, StoreError> {
                // A conflicting active run may complete between our conflict and
                // our read of it; then the key is free and we try again.
                for _ in 0..16 {
                    let mut tx = self.begin_write().await?;
                    let mut q =
                        QueryBuilder::<$db>::new(format!("INSERT INTO operation_runs ({RUN_COLUMNS}) VALUES ("));
                    let mut b = q.separated(", ");
                    push_run(&mut b, run);
                    b.push_unseparated(format!(
                        ") ON CONFLICT (dedup_key) WHERE {ACTIVE_KEYED} DO NOTHING RETURNING *"
                    ));
                    let row = q.build().fetch_optional(&mut *tx).await?;
                    if let Some(row) = row {
                        let written = run_from_row(&row)?;
                        let entries: Vec<AuditEntry> = audit
                            .iter()
                            .map(|a| if a.run_id.is_none() { a.for_run(&written) } else { a.clone() })
                            .collect();
                        insert_audit(&mut tx, &entries).await?;
                        tx.commit().await?;
                        return Ok(Inserted::New(written));
                    }
                    let key = run.dedup_key.clone().unwrap_or_default();
                    let existing =
                        sqlx::query(const_format_active_by_key!()).bind(key).fetch_optional(&mut *tx).await?;
                    tx.rollback().await?;
                    if let Some(row) = existing {
                        return Ok(Inserted::Existing(run_from_row(&row)?));
                    }
                }
                Err(StoreError::Database(sqlx::Error::Protocol(
                    "dedup key kept changing hands; gave up after 16 tries".into(),
                )))
            }

            async fn update_runs(
                &self,
                ids: &[Uuid],
                guard: &Guard,
                change: &RunWrite,
                now: chrono::DateTime<chrono::Utc>,
                audit: Option<&AuditEntry>,
            ) -> Result<Vec<OperationRun>, StoreError> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = self.begin_write().await?;
                let written = update_in(&mut tx, ids, guard, change, now, audit).await?;
                tx.commit().await?;
                Ok(written)
            }

            async fn update_runs_brief(
                &self,
                ids: &[Uuid],
                guard: &Guard,
                change: &RunWrite,
                now: chrono::DateTime<chrono::Utc>,
                audit: &AuditEntry,
            ) -> Result<Vec<Written>, StoreError> {
                if change.counts_add.as_ref().is_some_and(|c| !c.is_empty()) {
                    // Counts merge in Rust, from the full row.
                    let runs = self.update_runs(ids, guard, change, now, Some(audit)).await?;
                    return Ok(runs.iter().map(|r| Written { id: r.id, attempt: r.attempt }).collect());
                }
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = self.begin_write().await?;
                let mut written = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(1000) {
                    for row in write_audited(&mut *tx, chunk, guard, change, now, Some(audit), BRIEF_COLUMNS).await? {
                        written.push(Written { id: row.try_get("id")?, attempt: row.try_get("attempt")? });
                    }
                }
                tx.commit().await?;
                Ok(written)
            }

            async fn update_batch(
                &self,
                updates: &[Update],
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<Vec<OperationRun>>, StoreError> {
                if updates.iter().all(|u| u.ids.is_empty()) {
                    return Ok(updates.iter().map(|_| Vec::new()).collect());
                }
                let mut tx = self.begin_write().await?;
                let mut out = Vec::with_capacity(updates.len());
                for u in updates {
                    if u.ids.is_empty() {
                        out.push(Vec::new());
                        continue;
                    }
                    out.push(update_in(&mut tx, &u.ids, &u.guard, &u.write, now, u.audit.as_ref()).await?);
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn insert_runs(&self, runs: &[(OperationRun, AuditEntry)]) -> Result<Vec<Inserted>, StoreError> {
                if runs.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = self.begin_write().await?;
                let mut written = std::collections::HashMap::with_capacity(runs.len());
                for chunk in runs.chunks(1000) {
                    for run in insert_new_runs(&mut tx, chunk).await? {
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
                for chunk in ids.chunks(1000) {
                    let mut q = QueryBuilder::<$db>::new("SELECT * FROM operation_runs WHERE");
                    push_ids(&mut q, chunk);
                    for row in q.build().fetch_all(&self.pool).await? {
                        out.push(run_from_row(&row)?);
                    }
                }
                Ok(out)
            }

            async fn get_run(&self, id: Uuid) -> Result<Option<OperationRun>, StoreError> {
                let row = sqlx::query("SELECT * FROM operation_runs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(run_from_row).transpose()
            }

            async fn active_run_for_key(&self, dedup_key: &str) -> Result<Option<OperationRun>, StoreError> {
                let row = sqlx::query(const_format_active_by_key!())
                    .bind(dedup_key.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(run_from_row).transpose()
            }

            async fn list_runs(&self, f: &RunFilter) -> Result<Vec<OperationRun>, StoreError> {
                let mut q = QueryBuilder::<$db>::new("SELECT * FROM operation_runs WHERE 1 = 1");
                if let Some(ws) = &f.visible_workspaces {
                    if ws.is_empty() {
                        return Ok(Vec::new());
                    }
                    q.push(" AND workspace_id IN (");
                    let mut sep = q.separated(", ");
                    for w in ws {
                        sep.push_bind(w.clone());
                    }
                    sep.push_unseparated(")");
                }
                if let Some(v) = &f.workspace_id {
                    q.push(" AND workspace_id = ").push_bind(v.clone());
                }
                if let Some(v) = &f.operation {
                    q.push(" AND operation = ").push_bind(v.clone());
                }
                if let Some(v) = f.status {
                    q.push(" AND status = ").push_bind(v.as_str());
                }
                if let Some(v) = f.outcome {
                    q.push(" AND outcome = ").push_bind(v.as_str());
                }
                if let Some(v) = f.retry_of {
                    q.push(" AND retry_of = ").push_bind(v);
                }
                if let Some(v) = f.before {
                    q.push(" AND id < ").push_bind(v);
                }
                q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(f.limit.clamp(1, MAX_PAGE)));
                let rows = q.build().fetch_all(&self.pool).await?;
                rows.iter().map(run_from_row).collect()
            }

            async fn find_stale(&self, s: &StaleQuery) -> Result<Vec<StaleRun>, StoreError> {
                // The status is written as a literal so that the partial index
                // of running runs (ordered by id) can serve the page in every
                // plan, generic ones included.
                let mut q = QueryBuilder::<$db>::new(format!(
                    "SELECT {STALE_COLUMNS} FROM operation_runs WHERE status = '{}'",
                    s.status.as_str()
                ));
                match s.status {
                    crate::lifecycle::RunStatus::Running => q.push(" AND lease_expires_at < ").push_bind(s.cutoff),
                    _ => q.push(" AND queued_at < ").push_bind(s.cutoff),
                };
                if let Some(v) = &s.operation {
                    q.push(" AND operation = ").push_bind(v.clone());
                }
                if let Some(v) = &s.workspace_id {
                    q.push(" AND workspace_id = ").push_bind(v.clone());
                }
                match s.within.as_deref() {
                    None => {}
                    Some([]) => return Ok(Vec::new()),
                    Some(within) => {
                        q.push(" AND workspace_id IN (");
                        let mut sep = q.separated(", ");
                        for ws in within {
                            sep.push_bind(ws.clone());
                        }
                        sep.push_unseparated(")");
                    }
                }
                if let Some(v) = s.after {
                    q.push(" AND id > ").push_bind(v);
                }
                q.push(" ORDER BY id LIMIT ").push_bind(i64::from(s.limit.clamp(1, MAX_PAGE)));
                let mut tx = self.pool.begin().await?;
                stale_page_plan(&mut tx).await?;
                let rows = q.build().fetch_all(&mut *tx).await?;
                tx.commit().await?;
                rows.iter().map(stale_from_row).collect()
            }

            async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
                let mut conn = self.pool.acquire().await?;
                insert_audit(&mut conn, std::slice::from_ref(entry)).await
            }

            async fn audit_for_run(&self, run_id: Uuid) -> Result<Vec<AuditEvent>, StoreError> {
                let rows = sqlx::query("SELECT * FROM audit_events WHERE run_id = $1 ORDER BY id")
                    .bind(run_id)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(audit_from_row).collect()
            }
        }
    };
}

macro_rules! const_format_active_by_key {
    () => {
        "SELECT * FROM operation_runs WHERE dedup_key = $1 AND status IN ('queued', 'running')"
    };
}

pub(super) use const_format_active_by_key;
pub(super) use impl_run_store;
