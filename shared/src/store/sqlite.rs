//! The SQLite run store: the embedded default, one file, no servers.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::store::access_sql::impl_access_store;
use crate::store::sql::{
    const_format_active_by_key, impl_run_store, push_ids_as_list, stale_page_plan_as_is,
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
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
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

push_ids_as_list!(sqlx::Sqlite);
stale_page_plan_as_is!(sqlx::Sqlite);
write_audited_in_two_statements!(sqlx::Sqlite, sqlx::sqlite::SqliteRow);
impl_run_store!(SqliteRunStore, sqlx::Sqlite, sqlx::sqlite::SqliteRow, "sqlite", MIGRATOR);
impl_access_store!(SqliteRunStore, sqlx::Sqlite);
