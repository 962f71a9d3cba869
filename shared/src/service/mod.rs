//! `OperationRunService`: the single owner of every run transition. One
//! file per family of transitions:
//!
//! - [`dispatch`](self::dispatch): validation, dedup keys, dispatch (one or
//!   many) and refused dispatch;
//! - [`lease`](self::lease): claims, heartbeats and progress of the attempt
//!   that holds a run;
//! - [`finish`](self::finish): completion and block, one run or a batch;
//! - [`cancel`](self::cancel) and [`retry`](self::retry): what operators do;
//! - [`reconcile`](self::reconcile): the stale-run sweeps.
//!
//! Every write is a guarded [`RunWrite`](crate::store::RunWrite) plus its
//! audit row, in one transaction of the run store; zero rows written becomes
//! the [`TransitionError`] that says why.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::audit::{AuditEntry, AuditEvent};
use crate::catalog::{Catalog, OperationSpec};
use crate::clock::Clock;
use crate::counts::CountsError;
use crate::lifecycle::{RunStatus, Transition, TransitionError};
use crate::run::{Initiator, OperationRun};
use crate::store::{Guard, RunFilter, RunStore, RunWrite, StoreError};

mod cancel;
mod dispatch;
mod finish;
mod later;
mod lease;
mod prune;
mod reconcile;
mod retry;

pub use cancel::Cancelled;
pub use dispatch::{DispatchRequest, Dispatched};
pub use finish::{BlockFrom, Completion, Finish};
pub use later::{AttemptEnd, Later};
pub use lease::{Claim, Lease, LeaseState};
pub use prune::{PRUNE_ACTION, PruneReport, RetentionPolicy};
pub use reconcile::{ReconcileAction, ReconcileFilter, ReconcileKind, ReconcileReport};

/// Why the service refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The transition is not allowed from the run's current state.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operation is not in the catalog.
    #[error("unknown operation '{0}'")]
    UnknownOperation(String),
    /// The request is malformed; the message names what is wrong.
    #[error("{0}")]
    InvalidInput(String),
    /// Summary counts were refused.
    #[error(transparent)]
    Counts(#[from] CountsError),
    /// The run may not be retried.
    #[error("run {id} cannot be retried: {why}")]
    NotRetryable {
        /// The run.
        id: Uuid,
        /// Why not.
        why: String,
    },
}

/// Service settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceConfig {
    /// How long after a lease expired the reconciler waits before moving
    /// the run on (covers clock skew and a slow heartbeat).
    pub lease_grace: Duration,
    /// Runs per reconciler page.
    pub reconcile_page: u32,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self { lease_grace: Duration::from_secs(10), reconcile_page: 1000 }
    }
}

/// The single owner of every run transition.
#[derive(Debug, Clone)]
pub struct OperationRunService {
    store: Arc<dyn RunStore>,
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
    config: ServiceConfig,
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl OperationRunService {
    /// A service over `store`.
    pub fn new(store: Arc<dyn RunStore>, catalog: Arc<Catalog>, clock: Arc<dyn Clock>, config: ServiceConfig) -> Self {
        Self { store, catalog, clock, config }
    }

    /// The store (for reads).
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The operation's spec, or `UnknownOperation`.
    pub fn spec(&self, operation: &str) -> Result<&OperationSpec, ServiceError> {
        self.catalog.get(operation).ok_or_else(|| ServiceError::UnknownOperation(operation.to_string()))
    }

    /// One run.
    pub async fn get(&self, id: Uuid) -> Result<OperationRun, ServiceError> {
        Ok(self.store.get_run(id).await?.ok_or(TransitionError::NotFound(id))?)
    }

    /// Runs, newest first.
    pub async fn list(&self, filter: &RunFilter) -> Result<Vec<OperationRun>, ServiceError> {
        Ok(self.store.list_runs(filter).await?)
    }

    /// How many runs `filter` admits, per workspace, status and outcome.
    pub async fn count(&self, filter: &RunFilter) -> Result<Vec<crate::store::RunCount>, ServiceError> {
        Ok(self.store.count_runs(filter).await?)
    }

    /// A run's audit trail.
    pub async fn audit(&self, id: Uuid) -> Result<Vec<AuditEvent>, ServiceError> {
        Ok(self.store.audit_for_run(id).await?)
    }

    /// Record an audit row that goes with no run change (an execution
    /// denial logged elsewhere, an operator's refused action).
    pub async fn record(&self, entry: AuditEntry) -> Result<(), ServiceError> {
        Ok(self.store.append_audit(&entry).await?)
    }

    /// One guarded write to one run with its audit row; zero rows written
    /// becomes the error that says why.
    async fn write_one(
        &self,
        id: Uuid,
        transition: Transition,
        guard: Guard,
        write: RunWrite,
        audit: AuditEntry,
    ) -> Result<OperationRun, ServiceError> {
        let mut written = self.store.update_runs(&[id], &guard, &write, audit.at, Some(&audit)).await?;
        match written.pop() {
            Some(run) => Ok(run),
            None => Err(self.refused(id, transition, &guard).await),
        }
    }

    /// Turn "zero rows written" into the error that says why.
    async fn refused(&self, id: Uuid, transition: Transition, guard: &Guard) -> ServiceError {
        match self.store.get_run(id).await {
            Err(e) => e.into(),
            Ok(None) => TransitionError::NotFound(id).into(),
            Ok(Some(run)) => {
                // A lease holder that finds the run requeued or held by another
                // worker (or attempt) has lost its lease; a completed run is
                // simply closed.
                if guard.is_lease()
                    && run.status != RunStatus::Completed
                    && (run.status != RunStatus::Running || guard.held_by_other(&run))
                {
                    TransitionError::LeaseLost {
                        id,
                        transition,
                        holder: run.lease_owner.unwrap_or_else(|| "nobody".into()),
                        status: run.status,
                    }
                    .into()
                } else {
                    TransitionError::InvalidTransition { id, transition, status: run.status, outcome: run.outcome }
                        .into()
                }
            }
        }
    }

    /// The actor a worker's writes are audited as.
    fn worker_actor(worker: &str) -> Initiator {
        Initiator::service(format!("worker:{worker}"))
    }

    /// The lease length of an operation (the default for one not in the
    /// catalog).
    fn lease_for(&self, operation: &str) -> chrono::Duration {
        chrono_dur(self.catalog.get(operation).map_or_else(crate::catalog::defaults::lease, |s| s.lease))
    }
}
