//! The SQLite run store: the embedded default, one file, no servers.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::store::access_sql::impl_access_store;
use crate::store::sql::{
    const_format_active_by_key, impl_run_store, insert_runs_in_two_statements, push_ids_as_list, stale_page_plan_as_is,
    write_audited_in_two_statements,
};

/// Runs and audit in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteRunStore {
    pool: SqlitePool,
}

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
        Ok(Self { pool })
    }

    /// The pool (for the access tables and the queue).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Writers take the write lock up front, so that a transaction never has
    /// to upgrade a read lock (which SQLite refuses without waiting).
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
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

push_ids_as_list!(sqlx::Sqlite);
stale_page_plan_as_is!(sqlx::Sqlite);
write_audited_in_two_statements!(sqlx::Sqlite, sqlx::sqlite::SqliteRow);
insert_runs_in_two_statements!(sqlx::Sqlite);
impl_run_store!(SqliteRunStore, sqlx::Sqlite, sqlx::sqlite::SqliteRow, "sqlite", MIGRATOR);
impl_access_store!(SqliteRunStore, sqlx::Sqlite);
