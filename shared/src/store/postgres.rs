//! The Postgres run store: production truth, shared by every process.

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::store::access_sql::impl_access_store;
use crate::store::sql::{const_format_active_by_key, impl_run_store};

/// Runs and audit in Postgres.
#[derive(Debug, Clone)]
pub struct PgRunStore {
    pool: PgPool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl PgRunStore {
    /// Connect with a pool of at most `max_connections`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    /// Use an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool (for the access tables and the queue).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }
}

/// `id = ANY($n)` with the ids as one `uuid[]`: one statement text (so one
/// prepared statement per connection) whatever the batch size, where an
/// `IN` list is a new statement, parsed and planned again, for every size.
fn push_ids(q: &mut sqlx::QueryBuilder<sqlx::Postgres>, ids: &[uuid::Uuid]) {
    q.push(" id = ANY(").push_bind(ids.to_vec()).push(")");
}

/// A page of stale runs must be an ordered index scan that stops after the
/// page (the partial index of running runs by id, or the workspace index):
/// its cost is then the page's. The planner's own choice depends on its
/// statistics, and for a table that grew fast since the last `ANALYZE` (a
/// large batch of runs, then a dead worker) it picks a bitmap of every stale
/// run plus a sort, for every page: seen taking 55 ms a page and a pass over
/// 100,000 stale runs O(N^2). So, inside the page's transaction only, no
/// bitmap and no sort.
async fn stale_page_plan(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off").execute(conn).await?;
    Ok(())
}

/// A guarded write and its audit rows in one statement: the `UPDATE` in a
/// `WITH`, and an `INSERT … SELECT` from what it wrote, so that each audit
/// row is filled in from its run as written, inside the database (one round
/// trip, and no bind per audit column per run). `returning` is what the
/// statement returns of each run written.
async fn write_audited(
    conn: &mut sqlx::PgConnection,
    ids: &[uuid::Uuid],
    guard: &crate::store::Guard,
    change: &crate::store::Change,
    now: chrono::DateTime<chrono::Utc>,
    audit: Option<&crate::audit::AuditEntry>,
    returning: &str,
) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
    let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new("WITH w AS (");
    guarded_update(&mut q, ids, guard, change, now);
    q.push(" RETURNING *)");
    if let Some(a) = audit {
        q.push(format!(", a AS (INSERT INTO audit_events ({AUDIT_COLUMNS}) SELECT "));
        q.push_bind(a.at)
            .push(", ")
            .push_bind(a.actor.kind.as_str())
            .push(", ")
            .push_bind(a.actor.id.clone())
            .push(", ")
            .push_bind(a.action.clone())
            .push(", w.id, w.workspace_id, w.environment_id, ")
            .push_bind(guard.from.as_str())
            .push(", w.status, w.outcome, COALESCE(")
            .push_bind(a.reason_code.clone())
            .push(", w.reason_code), ")
            .push_bind(sqlx::types::Json(a.details.clone()))
            .push(" FROM w)");
    }
    q.push(format!(" SELECT {returning} FROM w"));
    Ok(q.build().fetch_all(conn).await?)
}

impl_run_store!(PgRunStore, sqlx::Postgres, sqlx::postgres::PgRow, "postgres", MIGRATOR);
impl_access_store!(PgRunStore, sqlx::Postgres);
