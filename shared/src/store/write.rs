//! The guarded writes of the run store: what a write requires of a run
//! ([`Guard`]) and the columns it sets ([`RunWrite`], one named constructor
//! per transition), alone or in a batch ([`Update`]).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::AuditEntry;
use crate::counts::SummaryCounts;
use crate::lifecycle::{RunOutcome, RunStatus};
use crate::run::{FailureEntry, OperationRun};

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

/// One guarded write of a batch (see [`RunStore::update_batch`](super::RunStore::update_batch)).
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
