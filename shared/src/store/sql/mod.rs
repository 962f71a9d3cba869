//! The SQL both stores run. Postgres and SQLite accept the same statements
//! (`$N` placeholders, `RETURNING`, partial-index upserts), so each query is
//! written once, as a named function in `runs.rs` or `access.rs` that returns
//! its statement ([`Stmt`]: the text and its arguments). [`SqlStore`] runs
//! them on a [`Backend`] — `store::postgres` or `store::sqlite` — which binds
//! the arguments to its driver's types (uuid, timestamptz and jsonb on
//! Postgres; blob, RFC 3339 text and JSON text on SQLite) and supplies the few
//! statements that differ (Postgres writes a run and its audit row in one
//! statement, SQLite in two).

use std::fmt::Write as _;
use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::error::BoxDynError;
use sqlx::types::Json;
use sqlx::{Arguments, Decode, Executor, IntoArguments, Pool, Transaction, Type};
use uuid::Uuid;

use crate::audit::AuditEntry;
use crate::run::OperationRun;
use crate::store::{Guard, RunWrite, StoreError};

mod access;
pub(crate) mod run_store;
pub use run_store::TxDispatch;
pub(crate) mod retention;
pub(crate) mod runs;

/// One argument of a statement, by the column type it binds to.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Uuid(Option<Uuid>),
    /// A `uuid[]` (Postgres only: SQLite lists ids one bind each).
    Uuids(Vec<Uuid>),
    Text(Option<String>),
    Int(i32),
    OptInt(Option<i32>),
    BigInt(i64),
    Time(Option<DateTime<Utc>>),
    Json(Option<serde_json::Value>),
}

impl From<Uuid> for Arg {
    fn from(v: Uuid) -> Self {
        Arg::Uuid(Some(v))
    }
}
impl From<Option<Uuid>> for Arg {
    fn from(v: Option<Uuid>) -> Self {
        Arg::Uuid(v)
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_string()))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(Some(v.clone()))
    }
}
impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_string))
    }
}
impl From<i32> for Arg {
    fn from(v: i32) -> Self {
        Arg::Int(v)
    }
}
impl From<Option<i32>> for Arg {
    fn from(v: Option<i32>) -> Self {
        Arg::OptInt(v)
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::BigInt(v)
    }
}
impl From<DateTime<Utc>> for Arg {
    fn from(v: DateTime<Utc>) -> Self {
        Arg::Time(Some(v))
    }
}
impl From<Option<DateTime<Utc>>> for Arg {
    fn from(v: Option<DateTime<Utc>>) -> Self {
        Arg::Time(v)
    }
}
impl From<serde_json::Value> for Arg {
    fn from(v: serde_json::Value) -> Self {
        Arg::Json(Some(v))
    }
}
impl From<Option<serde_json::Value>> for Arg {
    fn from(v: Option<serde_json::Value>) -> Self {
        Arg::Json(v)
    }
}

/// A statement: its text, with `$N` placeholders, and its arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stmt {
    pub(crate) sql: String,
    pub(crate) args: Vec<Arg>,
}

impl Stmt {
    /// A statement starting with `sql`.
    pub(crate) fn new(sql: impl Into<String>) -> Self {
        Self { sql: sql.into(), args: Vec::new() }
    }

    /// Append text.
    pub(crate) fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Append a placeholder and bind `v` to it.
    pub(crate) fn bind(&mut self, v: impl Into<Arg>) -> &mut Self {
        self.args.push(v.into());
        let _ = write!(self.sql, "${}", self.args.len());
        self
    }

    /// `(… , …)`: a placeholder per item, bound to it.
    pub(crate) fn bind_list<T: Into<Arg>>(&mut self, items: impl IntoIterator<Item = T>) -> &mut Self {
        self.sql.push('(');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.bind(item);
        }
        self.sql.push(')');
        self
    }

    /// Bind `v` to the next of the placeholders the text already has.
    pub(crate) fn arg(mut self, v: impl Into<Arg>) -> Self {
        self.args.push(v.into());
        self
    }

    /// The statement with its times bound as fixed-width RFC 3339 text
    /// (nanoseconds, `+00:00`): SQLite compares times as text, and the
    /// driver's own encoding drops trailing zero digits, so that
    /// `…:05+00:00` would sort after `…:05.5+00:00`.
    pub(crate) fn with_fixed_width_times(mut self) -> Self {
        for arg in &mut self.args {
            if let Arg::Time(t) = arg {
                *arg = Arg::Text(t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, false)));
            }
        }
        self
    }

    /// The arguments in the driver's form; `uuids` binds an `Arg::Uuids`
    /// (Postgres's `uuid[]`; a backend without arrays refuses it).
    pub(crate) fn arguments<DB>(
        &self,
        uuids: impl Fn(&mut DB::Arguments, &[Uuid]) -> Result<(), BoxDynError>,
    ) -> Result<DB::Arguments, sqlx::Error>
    where
        DB: sqlx::Database,
        for<'q> Option<Uuid>: sqlx::Encode<'q, DB> + Type<DB>,
        for<'q> Option<String>: sqlx::Encode<'q, DB> + Type<DB>,
        for<'q> i32: sqlx::Encode<'q, DB> + Type<DB>,
        for<'q> Option<i32>: sqlx::Encode<'q, DB> + Type<DB>,
        for<'q> i64: sqlx::Encode<'q, DB> + Type<DB>,
        for<'q> Option<DateTime<Utc>>: sqlx::Encode<'q, DB> + Type<DB>,
        for<'q> Option<Json<serde_json::Value>>: sqlx::Encode<'q, DB> + Type<DB>,
    {
        let mut out = DB::Arguments::default();
        for arg in &self.args {
            match arg {
                Arg::Uuid(v) => out.add(*v),
                Arg::Uuids(v) => uuids(&mut out, v),
                Arg::Text(v) => out.add(v.clone()),
                Arg::Int(v) => out.add(*v),
                Arg::OptInt(v) => out.add(*v),
                Arg::BigInt(v) => out.add(*v),
                Arg::Time(v) => out.add(*v),
                Arg::Json(v) => out.add(v.clone().map(Json)),
            }
            .map_err(sqlx::Error::Encode)?;
        }
        Ok(out)
    }
}

/// Run `stmt` on `conn`; its rows.
pub(crate) async fn fetch_rows<DB>(
    conn: &mut DB::Connection,
    stmt: Stmt,
    args: DB::Arguments,
) -> Result<Vec<DB::Row>, sqlx::Error>
where
    DB: sqlx::Database,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    sqlx::query_with(sqlx::AssertSqlSafe(stmt.sql), args).fetch_all(conn).await
}

/// Reading a row's columns by name, as the types the schema uses.
pub trait Cols {
    fn uuid(&self, col: &str) -> Result<Uuid, sqlx::Error>;
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, sqlx::Error>;
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, col: &str) -> Result<i32, sqlx::Error>;
    fn opt_int(&self, col: &str) -> Result<Option<i32>, sqlx::Error>;
    fn bigint(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn time(&self, col: &str) -> Result<DateTime<Utc>, sqlx::Error>;
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;
    fn json(&self, col: &str) -> Result<serde_json::Value, sqlx::Error>;
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>, sqlx::Error>;
}

impl<R> Cols for R
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> Uuid: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> DateTime<Utc>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Json<serde_json::Value>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn uuid(&self, col: &str) -> Result<Uuid, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, sqlx::Error> {
        self.try_get(col)
    }
    fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(col)
    }
    fn int(&self, col: &str) -> Result<i32, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i32>, sqlx::Error> {
        self.try_get(col)
    }
    fn bigint(&self, col: &str) -> Result<i64, sqlx::Error> {
        self.try_get(col)
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.try_get(col)
    }
    fn json(&self, col: &str) -> Result<serde_json::Value, sqlx::Error> {
        self.try_get::<Json<serde_json::Value>, _>(col).map(|j| j.0)
    }
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>, sqlx::Error> {
        self.try_get::<Option<Json<serde_json::Value>>, _>(col).map(|j| j.map(|j| j.0))
    }
}

/// What a store needs of its database beyond the shared SQL: how to run a
/// statement, how to name a set of ids, and the writes it makes its own way.
pub trait Backend: sqlx::Database<Row: Cols> {
    /// `postgres` or `sqlite`.
    const BACKEND: &'static str;

    /// Apply the schema.
    fn migrate(pool: &Pool<Self>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Begin a transaction that writes.
    fn begin_write(pool: &Pool<Self>) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send;

    /// Run `stmt`; its rows.
    fn fetch(
        conn: &mut Self::Connection,
        stmt: Stmt,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send;

    /// Run `stmt`; the number of rows it touched.
    fn execute(conn: &mut Self::Connection, stmt: Stmt) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Append ` id IN (…)` (or the backend's equal) for `ids`.
    fn push_ids(stmt: &mut Stmt, ids: &[Uuid]);

    /// Prepare `conn`'s transaction for a page of stale runs.
    fn plan_stale_page(conn: &mut Self::Connection) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// A guarded write of one chunk and its audit rows; what `returning`
    /// names of each run written (it must include the run's id, workspace,
    /// environment, status, outcome and reason).
    fn write_audited(
        conn: &mut Self::Connection,
        ids: &[Uuid],
        guard: &Guard,
        write: &RunWrite,
        now: DateTime<Utc>,
        audit: Option<&AuditEntry>,
        returning: &str,
    ) -> impl Future<Output = Result<Vec<Self::Row>, StoreError>> + Send;

    /// New runs and their audit rows (a run whose dedup key an active run
    /// holds is left out); the runs written.
    fn insert_new_runs(
        conn: &mut Self::Connection,
        chunk: &[(OperationRun, AuditEntry)],
    ) -> impl Future<Output = Result<Vec<OperationRun>, StoreError>> + Send;

    /// The ids of the ready runs of `scopes`, scope by scope in that order,
    /// at most `per_scope` of each and `limit` in all; where the backend
    /// has row locks, locked until the transaction ends and skipping rows
    /// another transaction holds (so that concurrent claims never wait for
    /// each other nor take the same run).
    fn pick_ready(
        conn: &mut Self::Connection,
        scopes: &[String],
        now: DateTime<Utc>,
        per_scope: i64,
        limit: i64,
        skip: &[(String, String)],
        only: Option<&[String]>,
    ) -> impl Future<Output = Result<Vec<Uuid>, StoreError>> + Send;

    /// A connection that hears other processes' [`notify_ready`](Self::notify_ready).
    type Listener: Send + 'static;

    /// Tell other processes that runs became ready (nothing where the
    /// backend cannot: they poll).
    fn notify_ready(pool: &Pool<Self>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Tell other processes that runs became ready, inside the transaction
    /// on `conn` (delivered when it commits; nothing where the backend has
    /// no notices).
    fn notify_in(conn: &mut Self::Connection) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Start hearing other processes' notices (`None`: the backend has none).
    fn listen_ready(pool: &Pool<Self>) -> impl Future<Output = Result<Option<Self::Listener>, StoreError>> + Send;

    /// The next notice (and any others already arrived).
    fn next_ready(listener: &mut Self::Listener) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A run store (runs, audit, access, tokens, ticks) over one pool of a
/// [`Backend`].
pub struct SqlStore<B: Backend> {
    pub(crate) pool: Pool<B>,
    /// Wake-ups of this process's waiting workers (a counter each waiter
    /// compares with the last value it saw).
    pub(crate) wake: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl<B: Backend> std::fmt::Debug for SqlStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore").field("backend", &B::BACKEND).field("pool", &self.pool).finish()
    }
}

impl<B: Backend> Clone for SqlStore<B> {
    fn clone(&self) -> Self {
        Self { pool: self.pool.clone(), wake: self.wake.clone() }
    }
}

impl<B: Backend> SqlStore<B> {
    /// Use an existing pool.
    pub fn from_pool(pool: Pool<B>) -> Self {
        Self { pool, wake: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)) }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<B> {
        &self.pool
    }

    /// Run `stmt` on a connection of the pool; its rows.
    pub(crate) async fn fetch(&self, stmt: Stmt) -> Result<Vec<B::Row>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        B::fetch(&mut conn, stmt).await
    }

    /// Run `stmt` on a connection of the pool; the number of rows touched.
    pub(crate) async fn execute(&self, stmt: Stmt) -> Result<u64, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        B::execute(&mut conn, stmt).await
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(Box::new(e))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(Box::new(e))
    }
}
