//! Run stores: the only code that reads or writes `operation_runs` and
//! `audit_events`. One trait, a Postgres and a SQLite implementation, one
//! conformance suite (`shared/tests/conformance/`) that both pass.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::{AuditEntry, AuditEvent};
use crate::counts::SummaryCounts;
use crate::lifecycle::{RunOutcome, RunStatus};
use crate::run::{FailureEntry, OperationRun};

mod database;
mod postgres;
mod sql;
mod sqlite;

pub use database::Database;
pub use postgres::PgRunStore;
pub use sql::{Backend, SqlStore, TxDispatch};
pub use sqlite::{SqliteRunStore, seed_planner_statistics};

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

/// The conditions a guarded write requires; zero rows written means one of
/// them did not hold. Built by the named constructors, one per kind of
/// write.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// The status the run must be in.
    pub(crate) from: RunStatus,
    /// The lease owner it must have.
    pub(crate) lease_owner: Option<String>,
    /// The attempt it must be on: a lease owner's writes are fenced by the
    /// attempt it claimed, so that an attempt superseded by a requeue (and a
    /// new claim, perhaps by the same process) writes nothing.
    pub(crate) attempt: Option<i32>,
    /// Its lease must have expired before this instant.
    pub(crate) lease_expired_before: Option<DateTime<Utc>>,
}

impl Guard {
    /// The run must be in `from`.
    pub fn from(from: RunStatus) -> Self {
        Self { from, lease_owner: None, attempt: None, lease_expired_before: None }
    }

    /// The run must be running, leased to `worker`, on `attempt`: the guard
    /// of every write an attempt makes after its claim.
    pub fn lease(worker: &str, attempt: i32) -> Self {
        Self { lease_owner: Some(worker.to_string()), attempt: Some(attempt), ..Self::from(RunStatus::Running) }
    }

    /// The run must be running with a lease that expired before `cutoff`.
    pub fn lease_expired(cutoff: DateTime<Utc>) -> Self {
        Self { lease_expired_before: Some(cutoff), ..Self::from(RunStatus::Running) }
    }

    /// The status the run must be in.
    pub fn status(&self) -> RunStatus {
        self.from
    }

    /// Whether this guards the writes of a lease holder.
    pub fn is_lease(&self) -> bool {
        self.lease_owner.is_some()
    }

    /// Whether `run` is held by someone other than this guard's lease
    /// holder (another worker, or another attempt).
    pub fn held_by_other(&self, run: &OperationRun) -> bool {
        run.lease_owner != self.lease_owner || self.attempt.is_some_and(|a| a != run.attempt)
    }
}

/// The columns one guarded write sets: what a transition changes. Built only
/// by the named constructors below (one per transition, as River's
/// `JobSetStateCompleted` …), so that a combination of columns no transition
/// makes cannot be written. In the fields, `None` leaves a column as it is
/// and `Some(None)` clears it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunWrite {
    pub(crate) status: Option<RunStatus>,
    pub(crate) outcome: Option<RunOutcome>,
    pub(crate) reason_code: Option<Option<String>>,
    pub(crate) failure_summary: Option<Vec<FailureEntry>>,
    /// Counts added to the stored ones (merged from the full row).
    pub(crate) counts_add: Option<SummaryCounts>,
    pub(crate) checkpoint: Option<Option<serde_json::Value>>,
    /// Add one to the attempt.
    pub(crate) next_attempt: bool,
    /// Add one to the snoozes.
    pub(crate) next_snooze: bool,
    pub(crate) lease_owner: Option<Option<String>>,
    pub(crate) lease_expires_at: Option<Option<DateTime<Utc>>>,
    /// A lease expiry by each run's operation (a claim of runs of several
    /// operations in one write); takes the place of `lease_expires_at`.
    pub(crate) lease_ends: Option<LeaseEnds>,
    pub(crate) heartbeat_at: Option<Option<DateTime<Utc>>>,
    /// Set only if not yet set.
    pub(crate) cancel_requested_at: Option<DateTime<Utc>>,
    pub(crate) queued_at: Option<DateTime<Utc>>,
    pub(crate) repushed_at: Option<Option<DateTime<Utc>>>,
    /// When a queued run may be claimed.
    pub(crate) available_at: Option<DateTime<Utc>>,
    /// Set only if not yet set.
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) completed_at: Option<DateTime<Utc>>,
}

impl RunWrite {
    /// queued → running: leased to `worker` until `lease_ends`, started now.
    pub fn claim(worker: &str, now: DateTime<Utc>, lease_ends: LeaseEnds) -> Self {
        Self {
            status: Some(RunStatus::Running),
            lease_owner: Some(Some(worker.to_string())),
            lease_ends: Some(lease_ends),
            heartbeat_at: Some(Some(now)),
            started_at: Some(now),
            ..Self::default()
        }
    }

    /// A heartbeat or progress of the lease holder: the lease renewed until
    /// `lease_until`, `counts` added, `checkpoint` stored (unless `None`).
    pub fn renew(
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        counts: SummaryCounts,
        checkpoint: Option<serde_json::Value>,
    ) -> Self {
        Self {
            lease_expires_at: Some(Some(lease_until)),
            heartbeat_at: Some(Some(now)),
            counts_add: Some(counts),
            checkpoint: checkpoint.map(Some),
            ..Self::default()
        }
    }

    /// running → completed with `outcome`, its reason and failures, `counts`
    /// added and `checkpoint` kept (unless `None`); the lease released.
    pub fn complete(
        now: DateTime<Utc>,
        outcome: RunOutcome,
        reason: Option<String>,
        failures: Vec<FailureEntry>,
        counts: SummaryCounts,
        checkpoint: Option<serde_json::Value>,
    ) -> Self {
        Self {
            counts_add: Some(counts),
            checkpoint: checkpoint.map(Some),
            ..Self::ended(now, outcome, reason, Some(failures))
        }
    }

    /// → completed/blocked with `reason` and one failure saying why.
    pub fn block(now: DateTime<Utc>, reason: &str, message: String) -> Self {
        Self::fail(now, RunOutcome::Blocked, reason, message)
    }

    /// → completed/failed with `reason` and one failure saying why (the
    /// reconciler's expiries); the lease, if any, released.
    pub fn expire(now: DateTime<Utc>, reason: &str, message: String) -> Self {
        Self::fail(now, RunOutcome::Failed, reason, message)
    }

    /// queued → completed/cancelled by an operator.
    pub fn cancel(now: DateTime<Utc>, reason: &str) -> Self {
        Self { cancel_requested_at: Some(now), ..Self::ended(now, RunOutcome::Cancelled, Some(reason.into()), None) }
    }

    /// A running run asked to stop (its lease holder ends it).
    pub fn request_cancel(now: DateTime<Utc>) -> Self {
        Self { cancel_requested_at: Some(now), ..Self::default() }
    }

    /// running (lease expired, cancel requested) → completed/cancelled.
    pub fn cancel_stale(now: DateTime<Utc>, reason: &str) -> Self {
        Self::ended(now, RunOutcome::Cancelled, Some(reason.into()), None)
    }

    /// running (lease expired) → queued again, on the next attempt, its
    /// checkpoint kept.
    pub fn requeue(now: DateTime<Utc>) -> Self {
        Self {
            status: Some(RunStatus::Queued),
            next_attempt: true,
            lease_owner: Some(None),
            lease_expires_at: Some(None),
            heartbeat_at: Some(None),
            queued_at: Some(now),
            available_at: Some(now),
            repushed_at: Some(None),
            ..Self::default()
        }
    }

    /// running → queued, waiting until `at`, on the next attempt: the
    /// failure (`reason`) is the run's reason while it waits, `failures` its
    /// whole summary (every attempt's), `counts` added, `checkpoint` kept
    /// (unless `None`); the lease released.
    pub fn retry_later(
        now: DateTime<Utc>,
        at: DateTime<Utc>,
        reason: &str,
        failures: Vec<FailureEntry>,
        counts: SummaryCounts,
        checkpoint: Option<serde_json::Value>,
    ) -> Self {
        Self {
            next_attempt: true,
            reason_code: Some(Some(reason.into())),
            failure_summary: Some(failures),
            ..Self::wait_until(now, at, counts, checkpoint)
        }
    }

    /// running → queued, waiting until `at`, on the same attempt (one more
    /// snooze when `counted`): `reason`, if any, is why it waits.
    pub fn snooze(
        now: DateTime<Utc>,
        at: DateTime<Utc>,
        reason: Option<&str>,
        counted: bool,
        counts: SummaryCounts,
        checkpoint: Option<serde_json::Value>,
    ) -> Self {
        Self {
            next_snooze: counted,
            reason_code: Some(reason.map(str::to_string)),
            ..Self::wait_until(now, at, counts, checkpoint)
        }
    }

    /// A waiting queued run made ready at `now` (an operator's "retry now").
    pub fn ready_now(now: DateTime<Utc>) -> Self {
        Self { available_at: Some(now), ..Self::default() }
    }

    fn wait_until(
        now: DateTime<Utc>,
        at: DateTime<Utc>,
        counts: SummaryCounts,
        checkpoint: Option<serde_json::Value>,
    ) -> Self {
        Self {
            status: Some(RunStatus::Queued),
            lease_owner: Some(None),
            lease_expires_at: Some(None),
            heartbeat_at: Some(None),
            queued_at: Some(now),
            available_at: Some(at.max(now)),
            counts_add: Some(counts),
            checkpoint: checkpoint.map(Some),
            ..Self::default()
        }
    }

    /// The status the write leaves the run in (`None`: unchanged).
    pub fn status(&self) -> Option<RunStatus> {
        self.status
    }

    /// Whether the write moves the run to its next attempt.
    pub fn adds_attempt(&self) -> bool {
        self.next_attempt
    }

    /// Whether the write merges counts into the stored ones (which needs the
    /// full row).
    pub fn adds_counts(&self) -> bool {
        self.counts_add.as_ref().is_some_and(|c| !c.is_empty())
    }

    fn fail(now: DateTime<Utc>, outcome: RunOutcome, reason: &str, message: String) -> Self {
        let failure = FailureEntry { reason_code: reason.into(), message };
        Self::ended(now, outcome, Some(reason.into()), Some(vec![failure]))
    }

    fn ended(
        now: DateTime<Utc>,
        outcome: RunOutcome,
        reason: Option<String>,
        failures: Option<Vec<FailureEntry>>,
    ) -> Self {
        Self {
            status: Some(RunStatus::Completed),
            outcome: Some(outcome),
            reason_code: Some(reason),
            failure_summary: failures,
            lease_owner: Some(None),
            lease_expires_at: Some(None),
            completed_at: Some(now),
            ..Self::default()
        }
    }
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
    pub write: RunWrite,
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
    /// Only queued runs still waiting at this instant (their `available_at`
    /// after it): delayed runs, retries waiting for their next attempt,
    /// snoozed runs.
    pub waiting_at: Option<DateTime<Utc>>,
    /// Only these workspaces (a second visibility bound, e.g. where an
    /// operator holds the capability an action needs); `Some(empty)` lists
    /// nothing.
    pub workspace_in: Option<Vec<String>>,
    /// One reason code.
    pub reason_code: Option<String>,
    /// One environment.
    pub environment_id: Option<String>,
    /// Runs dispatched by this schedule.
    pub schedule: Option<String>,
    /// Runs started by this actor (of this kind, when given).
    pub initiator: Option<InitiatorFilter>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Completed at or after (completed runs only).
    pub completed_after: Option<DateTime<Utc>>,
    /// Completed before (completed runs only).
    pub completed_before: Option<DateTime<Utc>>,
    /// Cursor: only runs older than this id (lists are newest first).
    pub before: Option<Uuid>,
    /// At most this many (the store caps it at 1,000).
    pub limit: u32,
}

/// Runs by who started them: `kind:id` (`user:ops-user-1`,
/// `schedule:svc-scheduler`) or an actor id of any kind.
#[derive(Debug, Clone, PartialEq)]
pub struct InitiatorFilter {
    /// The actor kind, when named.
    pub kind: Option<crate::lifecycle::ActorKind>,
    /// The actor id.
    pub id: String,
}

impl std::str::FromStr for InitiatorFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, id) = match s.split_once(':') {
            Some((k, id)) if matches!(k, "user" | "service" | "schedule") => {
                (Some(k.parse().map_err(|e| format!("{e}"))?), id)
            }
            _ => (None, s),
        };
        if id.trim().is_empty() || id.len() > crate::run::MAX_ID_LEN || id.chars().any(char::is_control) {
            return Err(format!(
                "'{}' is not an initiator (ACTOR or KIND:ACTOR, KIND user, service or schedule)",
                s.escape_debug()
            ));
        }
        Ok(Self { kind, id: id.to_string() })
    }
}

/// Which audit rows to read (`oprun audit`). Every field narrows the list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditFilter {
    /// Only rows of these workspaces; `Some(empty)` lists nothing.
    pub visible_workspaces: Option<Vec<String>>,
    /// With `visible_workspaces`: rows of no workspace too (administrative
    /// acts of the whole installation).
    pub include_unscoped: bool,
    /// One actor id.
    pub actor: Option<String>,
    /// One action (`schedule.pause`), or a prefix ending in `*` (`access.*`).
    pub action: Option<String>,
    /// Only rows of no run (administrative acts, refused actions).
    pub administrative: bool,
    /// One run's rows.
    pub run_id: Option<Uuid>,
    /// At or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Cursor: rows older than this id (newest first).
    pub before: Option<i64>,
    /// At most this many (capped at 1,000).
    pub limit: u32,
}

/// What one page of retention deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrunedPage {
    /// Runs deleted.
    pub runs: u64,
    /// Their audit rows, deleted with them.
    pub audit_rows: u64,
    /// Runs the page found (a run retried meanwhile is found, not deleted).
    pub found: u64,
    /// The newest completion time the page found: where the next page of
    /// the same pass starts.
    pub through: Option<DateTime<Utc>>,
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
        Self { write, audit, now, limit, after_scope, skip: Vec::new() }
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
