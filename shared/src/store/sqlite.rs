//! The SQLite run store: the embedded default, one file, no servers. The
//! queries are `store::sql`'s; here is how SQLite runs them (one bind per
//! id, writers taking the lock up front, a busy handler that retries soon),
//! and the two writes it makes in two statements, having no data-modifying
//! `WITH`.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Pool, Sqlite, Transaction};
use uuid::Uuid;

use crate::audit::AuditEntry;
use crate::run::OperationRun;
use crate::store::sql::run_store::insert_audit;
use crate::store::sql::runs;
use crate::store::sql::{Backend, Cols, SqlStore, Stmt, fetch_rows};
use crate::store::{Guard, RunWrite, StoreError};

/// Runs, audit, access, tokens and ticks in one SQLite file.
pub type SqliteRunStore = SqlStore<Sqlite>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

impl SqliteRunStore {
    /// Open (creating if missing) the file a `sqlite:` URL names, in WAL mode
    /// with a busy timeout so that several processes can work on it at once,
    /// and `synchronous = FULL`: a committed transition survives power loss.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    let mut handle = conn.lock_handle().await?;
                    wait_briefly_when_busy(handle.as_raw_handle())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self::from_pool(pool))
    }
}

/// Take the migration lock of the store file `db` (none for an in-memory
/// store); it is held until the returned file is dropped.
async fn lock_for_migration(db: &std::path::Path) -> Result<Option<std::fs::File>, StoreError> {
    let name = db.as_os_str();
    if name.is_empty() || name == ":memory:" {
        return Ok(None);
    }
    let mut path = name.to_os_string();
    path.push(".migrate-lock");
    let locked = tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        file.lock()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| StoreError::Migrate(Box::new(e)))?
    .map_err(|e| StoreError::Migrate(Box::new(e)))?;
    Ok(Some(locked))
}

/// How long a writer waits for the write lock before it gives up (as the
/// `busy_timeout` it replaces).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Replace SQLite's busy handler on `db`. Its own (what `busy_timeout`
/// installs) sleeps 1, 2, 5, 10 … then 100 ms between tries, so a writer
/// that met the lock taken goes on sleeping long after it is free: under
/// `oprun bench` (one process, workers, dispatchers and apalis sharing the
/// file) `strace` counted 12.9 s of such sleep per 5 s, with the CPU 35 %
/// idle. This one tries again after 100 µs, then 200 µs … at most every
/// millisecond, for up to [`BUSY_TIMEOUT`].
#[allow(unsafe_code)]
fn wait_briefly_when_busy(db: std::ptr::NonNull<libsqlite3_sys::sqlite3>) -> Result<(), sqlx::Error> {
    extern "C" fn busy(_: *mut std::ffi::c_void, tries: std::ffi::c_int) -> std::ffi::c_int {
        let tries = tries.max(0) as u64;
        // 100 µs × (tries + 1) for the first ten tries (5.5 ms), then 1 ms each.
        let waited_us = if tries <= 10 { 50 * tries * (tries + 1) } else { 5_500 + (tries - 10) * 1_000 };
        if waited_us >= BUSY_TIMEOUT.as_micros() as u64 {
            return 0;
        }
        std::thread::sleep(Duration::from_micros(100 * (tries + 1).min(10)));
        1
    }
    // SAFETY: `db` is the open connection whose lock the caller holds, so no
    // statement runs on it meanwhile; `busy` is a plain function that
    // touches no user data (the pointer passed is null) and never unwinds.
    let rc = unsafe { libsqlite3_sys::sqlite3_busy_handler(db.as_ptr(), Some(busy), std::ptr::null_mut()) };
    if rc == libsqlite3_sys::SQLITE_OK {
        Ok(())
    } else {
        Err(sqlx::Error::Configuration(format!("sqlite3_busy_handler failed with code {rc}").into()))
    }
}

impl Backend for Sqlite {
    const BACKEND: &'static str = "sqlite";

    /// Under an exclusive lock on a file beside the store's
    /// (`FILE.migrate-lock`): sqlx takes no lock for SQLite migrations, so
    /// two processes opening a fresh file at once would both apply the
    /// first migration, and the second fail (`no such index`, `table
    /// already exists`). The lock is released when the migration ends, or
    /// with the process.
    async fn migrate(pool: &Pool<Self>) -> Result<(), StoreError> {
        let file = pool.connect_options().get_filename().to_path_buf();
        let _lock = lock_for_migration(&file).await?;
        MIGRATOR.run(pool).await?;
        seed_planner_statistics(pool, RUN_STATISTICS).await
    }

    /// Writers take the write lock up front, so that a transaction never has
    /// to upgrade a read lock (which SQLite refuses without waiting).
    async fn begin_write(pool: &Pool<Self>) -> Result<Transaction<'static, Self>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn fetch(conn: &mut SqliteConnection, stmt: Stmt) -> Result<Vec<SqliteRow>, sqlx::Error> {
        let stmt = stmt.with_fixed_width_times();
        let args = stmt.arguments::<Sqlite>(|_, _| Err("SQLite has no arrays: list the ids".into()))?;
        fetch_rows::<Sqlite>(conn, stmt, args).await
    }

    async fn execute(conn: &mut SqliteConnection, stmt: Stmt) -> Result<u64, sqlx::Error> {
        let stmt = stmt.with_fixed_width_times();
        let args = stmt.arguments::<Sqlite>(|_, _| Err("SQLite has no arrays: list the ids".into()))?;
        Ok(sqlx::query_with(sqlx::AssertSqlSafe(stmt.sql), args).execute(conn).await?.rows_affected())
    }

    /// `id IN (…)`, one bind per id (SQLite has no arrays).
    fn push_ids(stmt: &mut Stmt, ids: &[Uuid]) {
        stmt.push(" id IN ").bind_list(ids.iter().copied());
    }

    /// No plan settings: the planner reads the seeded statistics (see
    /// `worker::queue`).
    async fn plan_stale_page(_: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// The `UPDATE … RETURNING`, then one audit row per run written, filled
    /// in from what it returned.
    async fn write_audited(
        conn: &mut SqliteConnection,
        ids: &[Uuid],
        guard: &Guard,
        write: &RunWrite,
        now: DateTime<Utc>,
        audit: Option<&AuditEntry>,
        returning: &str,
    ) -> Result<Vec<SqliteRow>, StoreError> {
        let mut q = runs::update_guarded::<Sqlite>(ids, guard, write, now);
        q.push(&format!(" RETURNING {returning}"));
        let rows = Self::fetch(&mut *conn, q).await?;
        if let Some(audit) = audit {
            let entries =
                rows.iter().map(|row| runs::audit_for_written(row, audit, guard)).collect::<Result<Vec<_>, _>>()?;
            insert_audit::<Sqlite>(&mut *conn, &entries).await?;
        }
        Ok(rows)
    }

    /// The multi-row `INSERT … RETURNING`, then each written run's audit
    /// row, filled in from it.
    async fn insert_new_runs(
        conn: &mut SqliteConnection,
        chunk: &[(OperationRun, AuditEntry)],
    ) -> Result<Vec<OperationRun>, StoreError> {
        let audit_of: HashMap<Uuid, &AuditEntry> = chunk.iter().map(|(r, a)| (r.id, a)).collect();
        let mut written = Vec::with_capacity(chunk.len());
        let mut entries = Vec::with_capacity(chunk.len());
        for row in Self::fetch(&mut *conn, runs::insert_runs(chunk.iter().map(|(r, _)| r))).await? {
            let run = runs::run_from_row(&row)?;
            if let Some(a) = audit_of.get(&run.id) {
                entries.push(a.for_run(&run));
            }
            written.push(run);
        }
        insert_audit::<Sqlite>(&mut *conn, &entries).await?;
        Ok(written)
    }

    /// One statement a scope, inside the claim's `BEGIN IMMEDIATE`: the
    /// write lock is the claim's, so no row can be taken twice.
    async fn pick_ready(
        conn: &mut SqliteConnection,
        scopes: &[String],
        now: DateTime<Utc>,
        per_scope: i64,
        limit: i64,
        skip: &[(String, String)],
        only: Option<&[String]>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut ids = Vec::new();
        for scope in scopes {
            let left = limit - ids.len() as i64;
            if left <= 0 {
                break;
            }
            for row in Self::fetch(&mut *conn, runs::select_ready_in_scope(scope, now, per_scope.min(left), skip, only))
                .await?
            {
                ids.push(row.uuid("id")?);
            }
        }
        Ok(ids)
    }

    /// SQLite has no notices: workers in other processes poll.
    type Listener = ();

    async fn notify_ready(_: &Pool<Self>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn notify_in(_: &mut SqliteConnection) -> Result<(), StoreError> {
        Ok(())
    }

    async fn listen_ready(_: &Pool<Self>) -> Result<Option<()>, StoreError> {
        Ok(None)
    }

    async fn next_ready(_: &mut ()) -> Result<(), StoreError> {
        std::future::pending().await
    }
}

/// Planner statistics (`sqlite_stat1` rows: table, index, "rows, then rows
/// per distinct prefix of the index's columns") for the run store's busy
/// tables as they look after a long history: a million runs, ids unique,
/// small partial indexes of the queued and running ones, five audit rows a
/// run. Without them SQLite plans as if every table were empty (an
/// `ANALYZE` on a fresh file records zero rows, and nothing analyzes again),
/// and a by-id write may walk an index instead of using the primary key.
const RUN_STATISTICS: &[(&str, Option<&str>, &str)] = &[
    ("operation_runs", None, "1000000"),
    ("operation_runs", Some("sqlite_autoindex_operation_runs_1"), "1000000 1"),
    ("operation_runs", Some("operation_runs_one_active_per_dedup_key"), "1000 1"),
    ("operation_runs", Some("operation_runs_queued_at"), "10000 1"),
    ("operation_runs", Some("operation_runs_running_id"), "1000 1"),
    ("operation_runs", Some("operation_runs_workspace_id"), "1000000 50000 1"),
    ("operation_runs", Some("operation_runs_retry_of"), "1000 1"),
    ("audit_events", None, "5000000"),
    ("audit_events", Some("audit_events_run_id"), "5000000 5 1"),
];

/// Write `stats` (replacing whatever an `ANALYZE` recorded for their tables)
/// in one transaction, and make every open connection of the file load
/// them: statistics are read when a connection loads the schema, so the
/// transaction also changes the schema (a throwaway table), which makes
/// every other connection reload it before its next statement. Does
/// nothing when the file already holds exactly these rows for the tables.
pub async fn seed_planner_statistics(
    pool: &sqlx::SqlitePool,
    stats: &[(&str, Option<&str>, &str)],
) -> Result<(), StoreError> {
    let mut tables: Vec<&str> = stats.iter().map(|(t, _, _)| *t).collect();
    tables.dedup();
    let has_stat1: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'").fetch_one(pool).await?;
    if has_stat1 == 0 {
        // Creates sqlite_stat1 (there is no other way to create it); cheap
        // on the fresh file this normally is.
        sqlx::query("ANALYZE").execute(pool).await?;
    }
    // Already seeded (every command that opens the file gets here): leave
    // the file, and the schema every other open connection holds, alone.
    let current: Vec<(String, Option<String>, String)> = sqlx::query_as("SELECT tbl, idx, stat FROM sqlite_stat1")
        .fetch_all(pool)
        .await?
        .into_iter()
        .filter(|(t, _, _): &(String, Option<String>, String)| tables.contains(&t.as_str()))
        .collect();
    let seeded = current.len() == stats.len()
        && stats.iter().all(|(t, i, st)| current.iter().any(|(ct, ci, cs)| ct == t && ci.as_deref() == *i && cs == st));
    if seeded {
        return Ok(());
    }
    // One connection for the write and the reload: the connection that
    // changes the schema does not see its own change as a change, so it keeps
    // the statistics it loaded before (zero rows) unless it reloads them
    // itself. (Seen: one pool connection of nine kept planning apalis's ack
    // as a walk of every job its worker ever locked, and 20,000 runs slowed
    // as they went.)
    let mut conn = pool.acquire().await?;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    for table in &tables {
        sqlx::query("DELETE FROM sqlite_stat1 WHERE tbl = ?").bind(*table).execute(&mut *tx).await?;
    }
    for (table, index, stat) in stats {
        sqlx::query("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)")
            .bind(*table)
            .bind(*index)
            .bind(*stat)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("CREATE TABLE _oprun_reload_statistics (x)").execute(&mut *tx).await?;
    sqlx::query("DROP TABLE _oprun_reload_statistics").execute(&mut *tx).await?;
    tx.commit().await?;
    sqlx::query("ANALYZE sqlite_schema").execute(&mut *conn).await?;
    Ok(())
}
