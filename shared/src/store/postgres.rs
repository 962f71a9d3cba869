//! The Postgres run store: production truth, shared by every process. The
//! queries are `store::sql`'s; here is how Postgres runs them, and the two
//! writes it makes in one statement where SQLite needs two.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgPoolOptions, PgRow};
use sqlx::{Pool, Postgres, Transaction};
use uuid::Uuid;

use crate::audit::AuditEntry;
use crate::run::OperationRun;
use crate::store::sql::runs::{self, ACTIVE_KEYED, AUDIT_COLUMNS, RUN_COLUMNS};
use crate::store::sql::{Backend, SqlStore, Stmt, fetch_rows};
use crate::store::{Guard, RunWrite, StoreError};

/// Runs, audit, access, tokens and ticks in Postgres.
pub type PgRunStore = SqlStore<Postgres>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl PgRunStore {
    /// Connect with a pool of at most `max_connections`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Self::from_pool(pool))
    }
}

/// The audited insert of new runs: the runs come in as one array per column
/// (`unnest`: 31 binds for the runs and 7 for their audit entries whatever
/// the batch size, where a `VALUES` list binds 31 per run and is a new
/// statement text for every size), the `INSERT` skips a run whose dedup key
/// an active run holds, and each written run's audit row is filled in from
/// it inside the database (id, scope, status, outcome, and its reason unless
/// the entry names one, as `AuditEntry::for_run` does). `$1` (the run ids)
/// pairs the audit entries with their runs.
static INSERT_RUNS_UNNEST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    [
        "WITH w AS (INSERT INTO operation_runs (",
        RUN_COLUMNS,
        ") SELECT * FROM unnest(",
        "$1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], ",
        "$9::text[], $10::jsonb[], $11::jsonb[], $12::text[], $13::text[], $14::text[], $15::text[], ",
        "$16::jsonb[], $17::jsonb[], $18::jsonb[], $19::int4[], $20::int4[], $21::uuid[], $22::text[], ",
        "$23::timestamptz[], $24::timestamptz[], $25::timestamptz[], $26::timestamptz[], $27::timestamptz[], ",
        "$28::timestamptz[], $29::timestamptz[], $30::timestamptz[], $31::timestamptz[], $39::timestamptz[]) ",
        "ON CONFLICT (dedup_key) WHERE ",
        ACTIVE_KEYED,
        " DO NOTHING RETURNING *), ",
        "a AS (INSERT INTO audit_events (",
        AUDIT_COLUMNS,
        ") ",
        "SELECT e.at, e.actor_kind, e.actor_id, e.action, w.id, w.workspace_id, w.environment_id, ",
        "e.from_status, w.status, w.outcome, COALESCE(e.reason_code, w.reason_code), e.details ",
        "FROM w JOIN unnest($1::uuid[], $32::timestamptz[], $33::text[], $34::text[], $35::text[], ",
        "$36::text[], $37::text[], $38::jsonb[]) ",
        "AS e (run_id, at, actor_kind, actor_id, action, from_status, reason_code, details) ON e.run_id = w.id) ",
        "SELECT * FROM w",
    ]
    .concat()
});

/// The channel of "runs became ready" notices (a dispatch, a requeue).
const READY_CHANNEL: &str = "oprun_runs_ready";

/// Each scope's ready runs, locked, skipping rows other claims hold.
static PICK_READY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let key = runs::SCOPE_KEY;
    format!(
        "SELECT p.id FROM unnest($1::text[]) AS s(k) CROSS JOIN LATERAL (\
         SELECT id FROM operation_runs WHERE status = 'queued' AND {key} = s.k AND available_at <= $2 \
         AND NOT EXISTS (SELECT 1 FROM unnest($5::text[], $6::text[]) AS x(e, o) \
         WHERE x.e = coalesce(environment_id, '') AND x.o = operation) \
         AND ($7::text[] IS NULL OR operation = ANY($7)) \
         ORDER BY {key}, available_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) p LIMIT $4"
    )
});

impl Backend for Postgres {
    const BACKEND: &'static str = "postgres";

    async fn migrate(pool: &Pool<Self>) -> Result<(), StoreError> {
        MIGRATOR.run(pool).await?;
        Ok(())
    }

    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin().await
    }

    async fn fetch(conn: &mut PgConnection, stmt: Stmt) -> Result<Vec<PgRow>, sqlx::Error> {
        let args = stmt.arguments::<Postgres>(|out, ids| sqlx::Arguments::add(out, ids.to_vec()))?;
        fetch_rows::<Postgres>(conn, stmt, args).await
    }

    async fn execute(conn: &mut PgConnection, stmt: Stmt) -> Result<u64, sqlx::Error> {
        let args = stmt.arguments::<Postgres>(|out, ids| sqlx::Arguments::add(out, ids.to_vec()))?;
        Ok(sqlx::query_with(sqlx::AssertSqlSafe(stmt.sql), args).execute(conn).await?.rows_affected())
    }

    /// `id = ANY($n)` with the ids as one `uuid[]`: one statement text (so
    /// one prepared statement per connection) whatever the batch size, where
    /// an `IN` list is a new statement, parsed and planned again, for every
    /// size.
    fn push_ids(stmt: &mut Stmt, ids: &[Uuid]) {
        stmt.push(" id = ANY(").bind(crate::store::sql::Arg::Uuids(ids.to_vec())).push(")");
    }

    /// A page of stale runs must be an ordered index scan that stops after
    /// the page (the partial index of running runs by id, or the workspace
    /// index): its cost is then the page's. The planner's own choice depends
    /// on its statistics, and for a table that grew fast since the last
    /// `ANALYZE` (a large batch of runs, then a dead worker) it picks a bitmap
    /// of every stale run plus a sort, for every page: seen taking 55 ms a
    /// page and a pass over 100,000 stale runs O(N^2). So, inside the page's
    /// transaction only, no bitmap and no sort.
    async fn plan_stale_page(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off").execute(conn).await?;
        Ok(())
    }

    /// The guarded write and its audit rows in one statement: the `UPDATE`
    /// in a `WITH`, and an `INSERT … SELECT` from what it wrote, so that each
    /// audit row is filled in from its run as written, inside the database
    /// (one round trip, and no bind per audit column per run).
    async fn write_audited(
        conn: &mut PgConnection,
        ids: &[Uuid],
        guard: &Guard,
        write: &RunWrite,
        now: DateTime<Utc>,
        audit: Option<&AuditEntry>,
        returning: &str,
    ) -> Result<Vec<PgRow>, StoreError> {
        let update = runs::update_guarded::<Postgres>(ids, guard, write, now);
        let mut q = Stmt { sql: format!("WITH w AS ({} RETURNING *)", update.sql), args: update.args };
        if let Some(a) = audit {
            q.push(&format!(", a AS (INSERT INTO audit_events ({AUDIT_COLUMNS}) SELECT "));
            q.bind(a.at).push(", ").bind(a.actor.kind.as_str()).push(", ").bind(&a.actor.id).push(", ");
            q.bind(&a.action).push(", w.id, w.workspace_id, w.environment_id, ").bind(guard.from.as_str());
            q.push(", w.status, w.outcome, COALESCE(").bind(a.reason_code.clone()).push(", w.reason_code), ");
            q.bind(a.details.clone()).push(" FROM w)");
        }
        q.push(&format!(" SELECT {returning} FROM w"));
        Ok(Self::fetch(conn, q).await?)
    }

    async fn insert_new_runs(
        conn: &mut PgConnection,
        chunk: &[(OperationRun, AuditEntry)],
    ) -> Result<Vec<OperationRun>, StoreError> {
        use sqlx::types::Json;
        let runs = || chunk.iter().map(|(r, _)| r);
        let audits = || chunk.iter().map(|(_, a)| a);
        let text = |f: fn(&crate::run::OperationRun) -> &str| runs().map(f).collect::<Vec<&str>>();
        let opt = |f: fn(&crate::run::OperationRun) -> Option<&str>| runs().map(f).collect::<Vec<Option<&str>>>();
        let at = |f: fn(&crate::run::OperationRun) -> Option<chrono::DateTime<chrono::Utc>>| {
            runs().map(f).collect::<Vec<Option<chrono::DateTime<chrono::Utc>>>>()
        };
        let q = sqlx::query(sqlx::AssertSqlSafe(INSERT_RUNS_UNNEST.as_str()))
            .bind(runs().map(|r| r.id).collect::<Vec<_>>())
            .bind(text(|r| &r.operation))
            .bind(text(|r| &r.workspace_id))
            .bind(opt(|r| r.environment_id.as_deref()))
            .bind(opt(|r| r.target_type.as_deref()))
            .bind(opt(|r| r.target_id.as_deref()))
            .bind(text(|r| r.initiator.kind.as_str()))
            .bind(text(|r| &r.initiator.id))
            .bind(text(|r| r.source_surface.as_str()))
            .bind(runs().map(|r| Json(&r.context)).collect::<Vec<_>>())
            .bind(runs().map(|r| Json(&r.params)).collect::<Vec<_>>())
            .bind(opt(|r| r.dedup_key.as_deref()))
            .bind(text(|r| r.status.as_str()))
            .bind(text(|r| r.outcome.as_str()))
            .bind(opt(|r| r.reason_code.as_deref()))
            .bind(runs().map(|r| Json(&r.failure_summary)).collect::<Vec<_>>())
            .bind(runs().map(|r| Json(r.summary_counts.to_json())).collect::<Vec<_>>())
            .bind(runs().map(|r| r.checkpoint.as_ref().map(Json)).collect::<Vec<_>>())
            .bind(runs().map(|r| r.attempt).collect::<Vec<_>>())
            .bind(runs().map(|r| r.max_attempts).collect::<Vec<_>>())
            .bind(runs().map(|r| r.retry_of).collect::<Vec<_>>())
            .bind(opt(|r| r.lease_owner.as_deref()))
            .bind(at(|r| r.lease_expires_at))
            .bind(at(|r| r.heartbeat_at))
            .bind(at(|r| r.cancel_requested_at))
            .bind(runs().map(|r| r.queued_at).collect::<Vec<_>>())
            .bind(at(|r| r.repushed_at))
            .bind(runs().map(|r| r.created_at).collect::<Vec<_>>())
            .bind(at(|r| r.started_at))
            .bind(at(|r| r.completed_at))
            .bind(runs().map(|r| r.updated_at).collect::<Vec<_>>())
            .bind(audits().map(|a| a.at).collect::<Vec<_>>())
            .bind(audits().map(|a| a.actor.kind.as_str()).collect::<Vec<_>>())
            .bind(audits().map(|a| a.actor.id.as_str()).collect::<Vec<_>>())
            .bind(audits().map(|a| a.action.as_str()).collect::<Vec<_>>())
            .bind(audits().map(|a| a.from_status.map(|s| s.as_str())).collect::<Vec<_>>())
            .bind(audits().map(|a| a.reason_code.as_deref()).collect::<Vec<_>>())
            .bind(audits().map(|a| Json(&a.details)).collect::<Vec<_>>())
            .bind(runs().map(|r| r.available_at).collect::<Vec<_>>());
        let rows = q.fetch_all(&mut *conn).await?;
        rows.iter().map(runs::run_from_row).collect()
    }

    /// One statement: each scope's ready runs through a `LATERAL` scan of
    /// the ready index, `FOR UPDATE SKIP LOCKED` (rows another claim holds
    /// are passed over, not waited for).
    async fn pick_ready(
        conn: &mut PgConnection,
        scopes: &[String],
        now: DateTime<Utc>,
        per_scope: i64,
        limit: i64,
        skip: &[(String, String)],
        only: Option<&[String]>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let ids = sqlx::query_scalar::<_, Uuid>(sqlx::AssertSqlSafe(PICK_READY.as_str()))
            .bind(scopes)
            .bind(now)
            .bind(per_scope)
            .bind(limit)
            .bind(skip.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>())
            .bind(skip.iter().map(|(_, o)| o.as_str()).collect::<Vec<_>>())
            .bind(only.map(|ops| ops.iter().map(String::as_str).collect::<Vec<_>>()))
            .fetch_all(conn)
            .await?;
        Ok(ids)
    }

    type Listener = sqlx::postgres::PgListener;

    async fn notify_ready(pool: &Pool<Self>) -> Result<(), StoreError> {
        Self::notify_in(&mut *pool.acquire().await?).await
    }

    async fn notify_in(conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, '')").bind(READY_CHANNEL).execute(conn).await?;
        Ok(())
    }

    async fn listen_ready(pool: &Pool<Self>) -> Result<Option<Self::Listener>, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(READY_CHANNEL).await?;
        Ok(Some(listener))
    }

    async fn next_ready(listener: &mut Self::Listener) -> Result<(), StoreError> {
        listener.recv().await?;
        while listener.next_buffered().is_some() {}
        Ok(())
    }
}
