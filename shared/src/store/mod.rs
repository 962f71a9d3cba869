//! Run stores: the only code that reads or writes `operation_runs` and
//! `audit_events`. One trait, a Postgres and a SQLite implementation, one
//! conformance suite (`shared/tests/conformance.rs`) that both pass.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::{AuditEntry, AuditEvent};
use crate::counts::SummaryCounts;
use crate::lifecycle::{RunOutcome, RunStatus};
use crate::run::{FailureEntry, OperationRun};

mod access_sql;
mod postgres;
mod sql;
mod sqlite;

pub use postgres::PgRunStore;
pub use sqlite::SqliteRunStore;

/// A storage failure (as opposed to a refused transition).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or refused a statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the schema failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value does not decode (a CHECK should have prevented it).
    #[error("stored run {id} has an unreadable {field}: {problem}")]
    Corrupt {
        /// The row.
        id: String,
        /// The column.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The connection string is not usable.
    #[error("database url: {0}")]
    Url(String),
}

/// The conditions a guarded write requires; zero rows written means one of
/// them did not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// The status the run must be in.
    pub from: RunStatus,
    /// The lease owner it must have.
    pub lease_owner: Option<String>,
    /// The attempt it must be on: a lease owner's writes are fenced by the
    /// attempt it claimed, so that an attempt superseded by a requeue (and a
    /// new claim, perhaps by the same process) writes nothing.
    pub attempt: Option<i32>,
    /// Its lease must have expired before this instant.
    pub lease_expired_before: Option<DateTime<Utc>>,
    /// It must have been queued before this instant.
    pub queued_before: Option<DateTime<Utc>>,
    /// Its job must not have been pushed again by the reconciler yet.
    pub not_repushed: bool,
}

impl Guard {
    /// The run must be in `from`.
    pub fn from(from: RunStatus) -> Self {
        Self {
            from,
            lease_owner: None,
            attempt: None,
            lease_expired_before: None,
            queued_before: None,
            not_repushed: false,
        }
    }

    /// The run must be running, leased to `worker`, on `attempt`: the guard
    /// of every write an attempt makes after its claim.
    pub fn lease(worker: &str, attempt: i32) -> Self {
        Self { lease_owner: Some(worker.to_string()), attempt: Some(attempt), ..Self::from(RunStatus::Running) }
    }
}

/// The columns a guarded write sets. `None` leaves a column as it is;
/// `Some(None)` clears it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Change {
    /// New status.
    pub status: Option<RunStatus>,
    /// New outcome.
    pub outcome: Option<RunOutcome>,
    /// New reason code.
    pub reason_code: Option<Option<String>>,
    /// New failure summary.
    pub failure_summary: Option<Vec<FailureEntry>>,
    /// Counts added to the stored ones (single-run writes only).
    pub counts_add: Option<SummaryCounts>,
    /// New checkpoint.
    pub checkpoint: Option<Option<serde_json::Value>>,
    /// Add one to the attempt.
    pub next_attempt: bool,
    /// New lease owner.
    pub lease_owner: Option<Option<String>>,
    /// New lease expiry.
    pub lease_expires_at: Option<Option<DateTime<Utc>>>,
    /// New lease expiry by each run's operation (a claim of runs of several
    /// operations in one write); takes the place of `lease_expires_at` (set
    /// one of the two, not both).
    pub lease_ends: Option<LeaseEnds>,
    /// New heartbeat time.
    pub heartbeat_at: Option<Option<DateTime<Utc>>>,
    /// Cancel requested at (set only if not yet set).
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// New queued time.
    pub queued_at: Option<DateTime<Utc>>,
    /// New re-push time.
    pub repushed_at: Option<Option<DateTime<Utc>>>,
    /// Started at (set only if not yet set).
    pub started_at: Option<DateTime<Utc>>,
    /// Completed at.
    pub completed_at: Option<DateTime<Utc>>,
}

/// Lease expiries that depend on the run's operation.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseEnds {
    /// `(operation, expiry)` for the operations with a lease of their own.
    pub by_operation: Vec<(String, DateTime<Utc>)>,
    /// The expiry for any other operation.
    pub otherwise: DateTime<Utc>,
}

/// One guarded write of a batch (see [`RunStore::update_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The runs.
    pub ids: Vec<Uuid>,
    /// What they must satisfy.
    pub guard: Guard,
    /// What is set.
    pub change: Change,
    /// The audit row written per run (filled in from each run).
    pub audit: Option<AuditEntry>,
}

/// A stale candidate: what the reconciler reads of a run to decide and to
/// explain what it does (no payload, no counts, no checkpoint).
#[derive(Debug, Clone, PartialEq)]
pub struct StaleRun {
    /// The run.
    pub id: Uuid,
    /// Its operation.
    pub operation: String,
    /// Its workspace.
    pub workspace_id: String,
    /// The attempt it is on.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// When an operator asked to cancel it.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// When its lease expires (running runs).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When it was (last) queued.
    pub queued_at: DateTime<Utc>,
    /// When the reconciler last pushed its job again.
    pub repushed_at: Option<DateTime<Utc>>,
}

/// A run a brief write wrote: its id and the attempt it is on now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The run.
    pub id: Uuid,
    /// Its attempt after the write.
    pub attempt: i32,
}

/// What inserting a run did.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// The run was written.
    New(OperationRun),
    /// An active run already holds the dedup key; nothing was written.
    Existing(OperationRun),
}

/// Which runs to list. Every field narrows the list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunFilter {
    /// Only these workspaces (visibility); `Some(empty)` lists nothing.
    pub visible_workspaces: Option<Vec<String>>,
    /// One workspace.
    pub workspace_id: Option<String>,
    /// One operation.
    pub operation: Option<String>,
    /// One status.
    pub status: Option<RunStatus>,
    /// One outcome.
    pub outcome: Option<RunOutcome>,
    /// Runs that retry this one.
    pub retry_of: Option<Uuid>,
    /// Cursor: only runs older than this id (lists are newest first).
    pub before: Option<Uuid>,
    /// At most this many (the store caps it at 1,000).
    pub limit: u32,
}

/// Which stale candidates to scan.
#[derive(Debug, Clone, PartialEq)]
pub struct StaleQuery {
    /// `running` (lease expired before `cutoff`) or `queued` (queued before `cutoff`).
    pub status: RunStatus,
    /// The instant.
    pub cutoff: DateTime<Utc>,
    /// Only this operation.
    pub operation: Option<String>,
    /// Only this workspace.
    pub workspace_id: Option<String>,
    /// Only these workspaces (`Some(empty)`: none).
    pub within: Option<Vec<String>>,
    /// Cursor: ids after this one (ascending).
    pub after: Option<Uuid>,
    /// Page size.
    pub limit: u32,
}

/// The most a list returns in one page.
pub const MAX_PAGE: u32 = 1000;

/// The run store.
#[async_trait]
pub trait RunStore: Send + Sync + std::fmt::Debug {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;

    /// Apply the schema (idempotent; safe from several processes).
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Check that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Insert a run and its audit rows in one transaction, unless an active
    /// run holds its dedup key (then return that run and write nothing).
    async fn insert_run(&self, run: &OperationRun, audit: &[AuditEntry]) -> Result<Inserted, StoreError>;

    /// Insert many runs in one transaction (multi-row statements), each
    /// with its audit row filled in from it. A run whose dedup key an active run
    /// holds is not written: its entry is that run (`Inserted::Existing`).
    /// Results are in the order of `runs`.
    async fn insert_runs(&self, runs: &[(OperationRun, AuditEntry)]) -> Result<Vec<Inserted>, StoreError>;

    /// Many guarded writes in one transaction (one commit for all: group
    /// commit), with their audit rows. Returns, per update, the runs written.
    async fn update_batch(&self, updates: &[Update], now: DateTime<Utc>) -> Result<Vec<Vec<OperationRun>>, StoreError>;

    /// Many runs by id (in no particular order; missing ids are left out).
    async fn get_runs(&self, ids: &[Uuid]) -> Result<Vec<OperationRun>, StoreError>;

    /// One guarded write to the runs `ids`, plus one audit row per run written
    /// (`audit` filled in from each run; none for a heartbeat), in one transaction. Returns the runs
    /// written; a run that did not meet the guard is simply not among them.
    async fn update_runs(
        &self,
        ids: &[Uuid],
        guard: &Guard,
        change: &Change,
        now: DateTime<Utc>,
        audit: Option<&AuditEntry>,
    ) -> Result<Vec<OperationRun>, StoreError>;

    /// As [`update_runs`](Self::update_runs), for writes to many runs whose
    /// caller already holds what it needs of them (the reconciler): returns
    /// only the id and attempt of each run written, so that no full row
    /// crosses the wire or is decoded.
    async fn update_runs_brief(
        &self,
        ids: &[Uuid],
        guard: &Guard,
        change: &Change,
        now: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> Result<Vec<Written>, StoreError>;

    /// One run.
    async fn get_run(&self, id: Uuid) -> Result<Option<OperationRun>, StoreError>;

    /// The active run holding a dedup key.
    async fn active_run_for_key(&self, dedup_key: &str) -> Result<Option<OperationRun>, StoreError>;

    /// Runs, newest first.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<OperationRun>, StoreError>;

    /// Stale candidates, oldest id first.
    async fn find_stale(&self, query: &StaleQuery) -> Result<Vec<StaleRun>, StoreError>;

    /// Append an audit row that goes with no run write (a denial, a refusal).
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;

    /// A run's audit rows, oldest first.
    async fn audit_for_run(&self, run_id: Uuid) -> Result<Vec<AuditEvent>, StoreError>;
}

/// Open the store a URL names: `postgres://…` or `sqlite://PATH` / `sqlite:PATH`.
pub async fn connect(url: &str, max_connections: u32) -> Result<std::sync::Arc<dyn RunStore>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(PgRunStore::connect(url, max_connections).await?))
    } else if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteRunStore::connect(url, max_connections).await?))
    } else {
        Err(StoreError::Url(format!(
            "'{}' is neither a postgres:// nor a sqlite: URL",
            crate::redact::excerpt(&crate::redact::redact_url(url), 80)
        )))
    }
}

/// Both views of one database: runs (through the service) and access truth
/// plus tick records; and, for the embedded default, the SQLite pool the
/// queue shares.
#[derive(Debug, Clone)]
pub struct Database {
    /// The run store.
    pub runs: std::sync::Arc<dyn RunStore>,
    /// The access tables and tick record.
    pub access: std::sync::Arc<dyn crate::access::AccessStore>,
    /// The SQLite pool, when the database is SQLite.
    pub sqlite: Option<sqlx::SqlitePool>,
}

/// Open the database a URL names (see [`connect`]).
pub async fn open(url: &str, max_connections: u32) -> Result<Database, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let s = std::sync::Arc::new(PgRunStore::connect(url, max_connections).await?);
        Ok(Database { runs: s.clone(), access: s, sqlite: None })
    } else if url.starts_with("sqlite:") {
        let s = std::sync::Arc::new(SqliteRunStore::connect(url, max_connections).await?);
        Ok(Database { runs: s.clone(), access: s.clone(), sqlite: Some(s.pool().clone()) })
    } else {
        connect(url, max_connections).await.map(|_| unreachable!("connect refuses other URLs"))
    }
}
