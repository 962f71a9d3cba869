//! How the attempt that holds a run ends it: completed with an outcome, or
//! blocked by reauthorization; one run, or a batch in one transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tracing::instrument;
use uuid::Uuid;

use super::{Later, Lease, OperationRunService, ServiceError};
use crate::audit::AuditEntry;
use crate::counts::SummaryCounts;
use crate::lifecycle::{RunOutcome, RunStatus, Transition};
use crate::reason::ReasonCode;
use crate::redact;
use crate::run::{FailureEntry, Initiator, MAX_FAILURE_ENTRIES, OperationRun};
use crate::store::{Guard, RunWrite, Update};

/// How a worker ends a run it holds (see [`OperationRunService::finish_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// Complete with this outcome.
    Complete(Completion),
    /// Blocked by reauthorization.
    Block {
        /// The `execution.*` reason.
        reason: ReasonCode,
        /// What to tell the operator.
        message: String,
    },
    /// Back to wait: another attempt later, or a snooze (see
    /// [`OperationRunService::plan_end`]).
    Later(Later),
}

/// How a run ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// A terminal outcome.
    pub outcome: RunOutcome,
    /// Why (required for failed and blocked).
    pub reason_code: Option<ReasonCode>,
    /// Failures worth showing (sanitized and bounded on write).
    pub failures: Vec<FailureEntry>,
    /// Counts added to the run's counts.
    pub counts: SummaryCounts,
    /// The checkpoint to keep (`None` keeps the stored one).
    pub checkpoint: Option<Value>,
}

impl Completion {
    /// Succeeded, adding `counts`.
    pub fn succeeded(counts: SummaryCounts) -> Self {
        Self { outcome: RunOutcome::Succeeded, reason_code: None, failures: vec![], counts, checkpoint: None }
    }

    /// Failed (or blocked, for a permission the provider refused) with one reason.
    pub fn failed(outcome: RunOutcome, reason: ReasonCode, message: &str) -> Self {
        Self {
            outcome,
            failures: vec![FailureEntry { reason_code: reason.as_str().into(), message: redact::sanitize(message) }],
            reason_code: Some(reason),
            counts: SummaryCounts::new(),
            checkpoint: None,
        }
    }
}

/// Where a block comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockFrom {
    /// A queued run, blocked before anyone claimed it.
    Queued,
    /// A running run, blocked by the attempt that holds it.
    Lease(Lease),
}

/// A guarded write of one run, its audit row, and the transition it makes.
struct Planned {
    guard: Guard,
    write: RunWrite,
    audit: AuditEntry,
    transition: Transition,
}

/// The failures a completion stores: at most [`MAX_FAILURE_ENTRIES`], each
/// sanitized and its reason bounded.
fn bounded_failures(failures: &[FailureEntry]) -> Vec<FailureEntry> {
    failures
        .iter()
        .take(MAX_FAILURE_ENTRIES)
        .map(|f| FailureEntry {
            reason_code: redact::excerpt(&f.reason_code, 100),
            message: redact::sanitize(&f.message),
        })
        .collect()
}

impl OperationRunService {
    /// The guarded write that completes a run.
    fn completion_write(
        &self,
        lease: &Lease,
        completion: &Completion,
        now: DateTime<Utc>,
    ) -> Result<Planned, ServiceError> {
        if !completion.outcome.is_terminal() {
            return Err(ServiceError::InvalidInput("a run cannot complete with outcome pending".into()));
        }
        if matches!(completion.outcome, RunOutcome::Failed | RunOutcome::Blocked) && completion.reason_code.is_none() {
            return Err(ServiceError::InvalidInput(format!("a {} run needs a reason code", completion.outcome)));
        }
        let reason = match completion.outcome {
            RunOutcome::Cancelled => completion.reason_code.or(Some(ReasonCode::RunCancelledByOperator)),
            _ => completion.reason_code,
        }
        .map(|r| r.as_str().to_string());
        let write = RunWrite::complete(
            now,
            completion.outcome,
            reason.clone(),
            bounded_failures(&completion.failures),
            completion.counts.clone(),
            completion.checkpoint.clone(),
        );
        let mut audit = AuditEntry::new(now, Self::worker_actor(&lease.worker), Transition::Complete.action());
        audit.reason_code = reason;
        Ok(Planned { guard: lease.guard(), write, audit, transition: Transition::Complete })
    }

    /// The guarded write that puts a run back to wait.
    fn later_write(lease: &Lease, later: &Later, now: DateTime<Utc>) -> Planned {
        let mut audit = AuditEntry::new(now, Self::worker_actor(&lease.worker), later.transition.action())
            .details(later.details.clone());
        audit.reason_code = later.reason.map(|r| r.as_str().to_string());
        Planned { guard: lease.guard(), write: later.write(now), audit, transition: later.transition }
    }

    /// The guarded write that blocks a run.
    fn block_write(from: &BlockFrom, reason: ReasonCode, message: &str, now: DateTime<Utc>) -> Planned {
        let (guard, actor) = match from {
            BlockFrom::Queued => (Guard::from(RunStatus::Queued), Initiator::service("oprun")),
            BlockFrom::Lease(lease) => (lease.guard(), Self::worker_actor(&lease.worker)),
        };
        let write = RunWrite::block(now, reason.as_str(), redact::sanitize(message));
        let audit = AuditEntry::new(now, actor, Transition::Block.action())
            .reason(reason.as_str())
            .details(json!({ "message": redact::sanitize(message) }));
        Planned { guard, write, audit, transition: Transition::Block }
    }

    /// Finish many runs, each by the attempt that holds it, in one
    /// transaction (group commit: identical writes share one statement).
    /// Results are per item, in order; the outer error is a store failure
    /// (nothing written).
    #[instrument(name = "finish", skip_all, fields(runs = items.len()), err)]
    pub async fn finish_batch(
        &self,
        items: &[(Lease, Finish)],
    ) -> Result<Vec<Result<OperationRun, ServiceError>>, ServiceError> {
        let now = self.clock.now();
        let mut updates: Vec<Update> = Vec::new();
        let mut slot_of: Vec<Result<(usize, Transition), ServiceError>> = Vec::with_capacity(items.len());
        for (lease, finish) in items {
            let planned = match finish {
                Finish::Complete(c) => self.completion_write(lease, c, now),
                Finish::Block { reason, message } => {
                    Ok(Self::block_write(&BlockFrom::Lease(lease.clone()), *reason, message, now))
                }
                Finish::Later(later) => Ok(Self::later_write(lease, later, now)),
            };
            match planned {
                Err(e) => slot_of.push(Err(e)),
                Ok(Planned { guard, write, audit, transition }) => {
                    let same = |u: &Update| u.guard == guard && u.write == write && u.audit.as_ref() == Some(&audit);
                    let at = match updates.iter().position(same) {
                        Some(i) => i,
                        None => {
                            updates.push(Update { ids: Vec::new(), guard, write, audit: Some(audit) });
                            updates.len() - 1
                        }
                    };
                    updates[at].ids.push(lease.run);
                    slot_of.push(Ok((at, transition)));
                }
            }
        }
        let written = self.store.update_batch(&updates, now).await?;
        let mut by_id: HashMap<Uuid, OperationRun> = written.into_iter().flatten().map(|r| (r.id, r)).collect();
        let mut out = Vec::with_capacity(items.len());
        for ((lease, _), slot) in items.iter().zip(slot_of) {
            let id = lease.run;
            out.push(match slot {
                Err(e) => Err(e),
                Ok((at, transition)) => match by_id.remove(&id) {
                    Some(run) => Ok(run),
                    None => Err(self.refused(id, transition, &updates[at].guard).await),
                },
            });
        }
        Ok(out)
    }

    /// Complete a running run (as [`finish_batch`](Self::finish_batch) of
    /// one). Only the attempt that holds the lease may.
    #[instrument(skip_all, fields(run.id = %lease.run, outcome = %completion.outcome), err)]
    pub async fn complete(&self, lease: &Lease, completion: Completion) -> Result<OperationRun, ServiceError> {
        self.finish_one(lease, Finish::Complete(completion)).await
    }

    /// Block a run (reauthorization said no): completed/blocked with an
    /// `execution.*` (or `provider.permission_missing`) reason. A running
    /// run is blocked by the attempt that holds it (as
    /// [`finish_batch`](Self::finish_batch) of one).
    #[instrument(skip_all, fields(run.id = %id, reason = %reason), err)]
    pub async fn block(
        &self,
        id: Uuid,
        from: BlockFrom,
        reason: ReasonCode,
        message: &str,
    ) -> Result<OperationRun, ServiceError> {
        match from {
            BlockFrom::Lease(lease) if lease.run == id => {
                self.finish_one(&lease, Finish::Block { reason, message: message.to_string() }).await
            }
            from => {
                let Planned { guard, write, audit, transition } =
                    Self::block_write(&from, reason, message, self.clock.now());
                self.write_one(id, transition, guard, write, audit).await
            }
        }
    }

    async fn finish_one(&self, lease: &Lease, finish: Finish) -> Result<OperationRun, ServiceError> {
        let mut out = self.finish_batch(&[(lease.clone(), finish)]).await?;
        out.pop().unwrap_or_else(|| Err(ServiceError::InvalidInput("nothing to finish".into())))
    }
}
