//! Run stores: the only code that reads or writes `operation_runs` and
//! `audit_events`. One trait, a Postgres and a SQLite implementation, one
//! conformance suite (`shared/tests/conformance/`) that both pass.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::{AuditEntry, AuditEvent};
use crate::lifecycle::RunOutcome;
use crate::run::OperationRun;

mod database;
mod postgres;
mod query;
mod sql;
mod sqlite;
mod write;

pub use database::Database;
pub use postgres::PgRunStore;
pub use query::{AuditFilter, InitiatorFilter, PrunedPage, RunCount, RunFilter, StaleQuery};
pub use sql::{Backend, SqlStore, TxDispatch};
pub use sqlite::{SqliteRunStore, seed_planner_statistics};
pub use write::{Guard, LeaseEnds, RunWrite, Update};

/// A driver's error, kept as the source of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A storage failure (as opposed to a refused transition).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or refused a statement.
    #[error("database error: {0}")]
    Database(#[source] BoxError),
    /// Applying the schema failed.
    #[error("migration failed: {0}")]
    Migrate(#[source] BoxError),
    /// Inserting a run met an active run holding its dedup key, which had
    /// finished when read, every time.
    #[error("dedup key kept changing hands; gave up after {tries} tries")]
    DedupContended {
        /// How many times it tried.
        tries: usize,
    },
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

/// The most a list returns in one page.
pub const MAX_PAGE: u32 = 1000;

/// A claim of ready runs: queued, their `available_at` come, taken fairly
/// across scopes (see [`RunStore::claim_ready`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyClaim {
    /// The claim write (always [`RunWrite::claim`]).
    pub(crate) write: RunWrite,
    /// The audit row written per run claimed.
    pub(crate) audit: AuditEntry,
    /// The instant: runs available at or before it are ready.
    pub(crate) now: DateTime<Utc>,
    /// At most this many runs.
    pub(crate) limit: u32,
    /// Round-robin cursor: start with the scopes after this scope key (the
    /// last one the previous claim took from); `None` starts at the first.
    pub(crate) after_scope: Option<String>,
    /// Runs left alone: (environment, operation) pairs whose provider budget
    /// has no room now (`""` is "no environment").
    pub(crate) skip: Vec<(String, String)>,
    /// Only runs of these operations (`None`: any): a worker claims only
    /// what its own catalog serves, so that during a rolling deploy a run of
    /// an operation it does not know waits for a worker that does.
    pub(crate) only: Option<Vec<String>>,
}

impl ReadyClaim {
    /// Claim up to `limit` ready runs with `write` (a [`RunWrite::claim`]),
    /// auditing each with `audit`, starting after the scope `after_scope`.
    pub fn new(
        write: RunWrite,
        audit: AuditEntry,
        now: DateTime<Utc>,
        limit: u32,
        after_scope: Option<String>,
    ) -> Self {
        Self { write, audit, now, limit, after_scope, skip: Vec::new(), only: None }
    }

    /// Claim only runs of `operations`.
    pub fn only(mut self, operations: Vec<String>) -> Self {
        self.only = Some(operations);
        self
    }

    /// Leave alone the runs of these (environment, operation) pairs (at most
    /// [`MAX_CLAIM_SKIPS`]; the rest are not skipped).
    pub fn skipping(mut self, mut skip: Vec<(String, String)>) -> Self {
        skip.truncate(MAX_CLAIM_SKIPS);
        self.skip = skip;
        self
    }
}

/// The most (environment, operation) pairs one claim leaves alone.
pub const MAX_CLAIM_SKIPS: usize = 256;

/// What a claim of ready runs took.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClaimedReady {
    /// The runs claimed (running, leased), oldest first within a scope.
    pub runs: Vec<OperationRun>,
    /// The scope key the next claim should start after (the last scope this
    /// one took from).
    pub last_scope: Option<String>,
}

/// Wakes a worker waiting for ready runs: a dispatch, a requeue, or (at the
/// latest) the poll interval. Built by [`RunStore::wakeups`].
#[async_trait]
pub trait Wakeups: Send {
    /// Forget wake-ups seen so far: call before a claim, so that a wake-up
    /// that arrives while it runs is not lost.
    fn arm(&mut self);

    /// Wait for a wake-up that arrived since [`arm`](Self::arm), or for
    /// `max` at most.
    async fn wait(&mut self, max: std::time::Duration);
}

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
        write: &RunWrite,
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
        write: &RunWrite,
        now: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> Result<Vec<Written>, StoreError>;

    /// One run.
    async fn get_run(&self, id: Uuid) -> Result<Option<OperationRun>, StoreError>;

    /// The active run holding a dedup key.
    async fn active_run_for_key(&self, dedup_key: &str) -> Result<Option<OperationRun>, StoreError>;

    /// Runs, newest first.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<OperationRun>, StoreError>;

    /// How many runs `filter` admits, per workspace, status and outcome
    /// (its `limit`, `before` and `retry_of` are ignored).
    async fn count_runs(&self, filter: &RunFilter) -> Result<Vec<RunCount>, StoreError>;

    /// Stale candidates, oldest id first.
    async fn find_stale(&self, query: &StaleQuery) -> Result<Vec<StaleRun>, StoreError>;

    /// Append an audit row that goes with no run write (a denial, a refusal).
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;

    /// Audit rows, newest first.
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError>;

    /// One page of retention, in one transaction: at most `limit` completed
    /// runs of `outcome` that completed before `before` (and at or after
    /// `from`, the previous page's `through`) and that no run retries,
    /// oldest first, deleted with their audit rows.
    async fn prune_runs(
        &self,
        outcome: RunOutcome,
        before: DateTime<Utc>,
        from: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<PrunedPage, StoreError>;

    /// How many runs [`prune_runs`](Self::prune_runs) would delete over all
    /// its pages, counting at most `cap`.
    async fn count_prunable_runs(
        &self,
        outcome: RunOutcome,
        before: DateTime<Utc>,
        cap: u64,
    ) -> Result<u64, StoreError>;

    /// One page of audit rows of no run older than `before` deleted (dry:
    /// counted); how many.
    async fn prune_audit(&self, before: DateTime<Utc>, limit: u32, dry_run: bool) -> Result<u64, StoreError>;

    /// Write a refused scheduled dispatch's blocked run with its audit row,
    /// or, when an open refusal of the same key and reason exists, count one
    /// more refusal on it (no new row). The run as it is now, and whether it
    /// is new.
    async fn record_refusal(&self, run: &OperationRun, audit: &AuditEntry) -> Result<(OperationRun, bool), StoreError>;

    /// Close the open refusals of `key` (their runs stay, counted); how many.
    async fn close_refusals(&self, key: &str, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// A run's audit rows, oldest first.
    async fn audit_for_run(&self, run_id: Uuid) -> Result<Vec<AuditEvent>, StoreError>;

    /// Claim ready runs in one transaction with their audit rows: queued
    /// runs whose `available_at` has come, taken round-robin across scopes
    /// (a scope's backlog delays another scope's run by at most about one
    /// claim), oldest first within a scope, skipping runs another claim
    /// holds. Two claims never take the same run.
    async fn claim_ready(&self, claim: &ReadyClaim) -> Result<ClaimedReady, StoreError>;

    /// Runs queued and ready at `now` (the queue's depth).
    async fn count_ready(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Tell waiting workers (in this process and, where the backend can,
    /// in others) that runs became ready.
    async fn wake_workers(&self) -> Result<(), StoreError>;

    /// A waiter for [`wake_workers`](Self::wake_workers)' wake-ups.
    async fn wakeups(&self) -> Result<Box<dyn Wakeups>, StoreError>;
}
