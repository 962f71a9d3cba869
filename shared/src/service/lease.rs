//! The attempt that holds a run: its claim, and its heartbeats and progress
//! (counts and checkpoint), each fenced by the worker and the attempt.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::instrument;
use uuid::Uuid;

use super::{OperationRunService, ServiceError, chrono_dur};
use crate::audit::AuditEntry;
use crate::counts::SummaryCounts;
use crate::lifecycle::{RunStatus, Transition, TransitionError};
use crate::redact;
use crate::run::OperationRun;
use crate::store::{Guard, LeaseEnds, ReadyClaim, RunWrite};

/// One attempt's hold on a run: the worker that claimed it and the attempt
/// that claim started. Every write the attempt makes after its claim is
/// fenced by both, so an attempt that was superseded (its lease expired, the
/// run was requeued and claimed again, perhaps by the same process) is told
/// `LeaseLost` and writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The run.
    pub run: Uuid,
    /// The lease owner (one per worker process).
    pub worker: String,
    /// The attempt the claim started.
    pub attempt: i32,
}

impl Lease {
    /// The hold a claimed run carries (`None` for a run no one holds).
    pub fn of(run: &OperationRun) -> Option<Self> {
        let worker = run.lease_owner.clone()?;
        Some(Self { run: run.id, worker, attempt: run.attempt })
    }

    pub(super) fn guard(&self) -> Guard {
        Guard::lease(&self.worker, self.attempt)
    }
}

/// What the lease holder learns from a heartbeat or progress write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LeaseState {
    /// The renewed expiry.
    pub lease_expires_at: DateTime<Utc>,
    /// Whether an operator asked the run to stop.
    pub cancel_requested: bool,
}

/// What claiming one delivered run found (see [`OperationRunService::claim_batch`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Claimed: running and leased to the worker.
    Claimed(Box<OperationRun>),
    /// No run has this id.
    NotFound,
    /// The run is not queued (a duplicate delivery, cancelled, finished).
    NotQueued(RunStatus),
}

impl OperationRunService {
    /// Claim one queued run for `worker` (as [`claim_batch`](Self::claim_batch)
    /// of one): running, leased.
    #[instrument(skip_all, fields(run.id = %id, worker = %worker), err)]
    pub async fn claim(&self, id: Uuid, worker: &str) -> Result<OperationRun, ServiceError> {
        match self.claim_batch(&[id], worker).await?.pop() {
            Some(Claim::Claimed(run)) => Ok(*run),
            Some(Claim::NotFound) | None => Err(TransitionError::NotFound(id).into()),
            Some(Claim::NotQueued(_)) => {
                Err(self.refused(id, Transition::Claim, &Guard::from(RunStatus::Queued)).await)
            }
        }
    }

    /// Claim the delivered runs `ids` for `worker`: one guarded write for the
    /// whole batch (the lease length, which is the operation's, is chosen
    /// inside the statement), and a read only of the runs it did not claim,
    /// to say why. Results are in the order of `ids`.
    #[instrument(name = "claim", skip_all, fields(runs = ids.len(), worker = %worker), err)]
    pub async fn claim_batch(&self, ids: &[Uuid], worker: &str) -> Result<Vec<Claim>, ServiceError> {
        let now = self.clock.now();
        let mut unique = Vec::with_capacity(ids.len());
        let mut seen = HashSet::with_capacity(ids.len());
        for id in ids {
            if seen.insert(*id) {
                unique.push(*id);
            }
        }
        let write = RunWrite::claim(worker, now, self.lease_ends(now));
        let audit = AuditEntry::new(now, Self::worker_actor(worker), Transition::Claim.action());
        let mut claimed: HashMap<Uuid, OperationRun> = (self.store)
            .update_runs(&unique, &Guard::from(RunStatus::Queued), &write, now, Some(&audit))
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        // A second delivery of one id in the batch finds it already running.
        let mut out: Vec<Option<Claim>> =
            ids.iter().map(|id| claimed.remove(id).map(|run| Claim::Claimed(Box::new(run)))).collect();
        let missed: Vec<Uuid> = ids.iter().zip(&out).filter(|(_, c)| c.is_none()).map(|(id, _)| *id).collect();
        if !missed.is_empty() {
            let status: HashMap<Uuid, RunStatus> =
                self.store.get_runs(&missed).await?.into_iter().map(|r| (r.id, r.status)).collect();
            for (slot, id) in out.iter_mut().zip(ids) {
                if slot.is_none() {
                    *slot = Some(status.get(id).map_or(Claim::NotFound, |s| Claim::NotQueued(*s)));
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Claim up to `limit` ready runs for `worker`: queued, their time come,
    /// taken round-robin across scopes (see [`RunStore::claim_ready`]);
    /// `cursor` carries the round robin from one claim to the next. Each
    /// claimed run is running, leased, and audited.
    ///
    /// [`RunStore::claim_ready`]: crate::RunStore::claim_ready
    #[instrument(name = "claim_ready", skip_all, fields(limit = limit, worker = %worker), err)]
    pub async fn claim_ready(
        &self,
        worker: &str,
        limit: u32,
        cursor: &mut Option<String>,
    ) -> Result<Vec<OperationRun>, ServiceError> {
        self.claim_ready_skipping(worker, limit, cursor, Vec::new()).await
    }

    /// As [`claim_ready`](Self::claim_ready), leaving alone the runs of the
    /// (environment, operation) pairs of `skip` (`""`: no environment):
    /// those whose provider budget has no room now.
    pub async fn claim_ready_skipping(
        &self,
        worker: &str,
        limit: u32,
        cursor: &mut Option<String>,
        skip: Vec<(String, String)>,
    ) -> Result<Vec<OperationRun>, ServiceError> {
        let now = self.clock.now();
        let write = RunWrite::claim(worker, now, self.lease_ends(now));
        let audit = AuditEntry::new(now, Self::worker_actor(worker), Transition::Claim.action());
        // Only the operations this process's catalog serves: during a
        // rolling deploy a run of an operation it does not know waits for a
        // worker that does, instead of failing run.operation_unknown.
        let served = self.catalog.operations.keys().cloned().collect();
        let claim = ReadyClaim::new(write, audit, now, limit, cursor.take()).skipping(skip).only(served);
        let claimed = self.store.claim_ready(&claim).await?;
        *cursor = claimed.last_scope;
        Ok(claimed.runs)
    }

    /// The lease expiry of a run claimed now, by its operation (the
    /// operations with the default lease share `otherwise`).
    fn lease_ends(&self, now: DateTime<Utc>) -> LeaseEnds {
        let default_lease = crate::catalog::defaults::lease();
        LeaseEnds {
            by_operation: (self.catalog.operations.iter())
                .filter(|(_, spec)| spec.lease != default_lease)
                .map(|(op, spec)| (op.clone(), now + chrono_dur(spec.lease)))
                .collect(),
            otherwise: now + chrono_dur(default_lease),
        }
    }

    /// Renew the lease. Only the attempt that holds it may.
    #[instrument(skip_all, fields(run.id = %lease.run), err)]
    pub async fn heartbeat(&self, lease: &Lease, operation: &str) -> Result<LeaseState, ServiceError> {
        self.progress(lease, operation, SummaryCounts::new(), None).await
    }

    /// Add counts and/or store a checkpoint, renewing the lease. Only the
    /// attempt that holds the lease may.
    #[instrument(skip_all, fields(run.id = %lease.run), err)]
    pub async fn progress(
        &self,
        lease: &Lease,
        operation: &str,
        counts: SummaryCounts,
        checkpoint: Option<Value>,
    ) -> Result<LeaseState, ServiceError> {
        if let Some(cp) = &checkpoint
            && let Some(path) = redact::find_secret_key(cp)
        {
            return Err(ServiceError::InvalidInput(format!("checkpoint holds a secret-named key '{path}'")));
        }
        let now = self.clock.now();
        let heartbeat_only = counts.is_empty() && checkpoint.is_none();
        let transition = if heartbeat_only { Transition::Heartbeat } else { Transition::Progress };
        // Heartbeats are not audited: they change nothing an operator acts on.
        let audit = (!heartbeat_only).then(|| {
            AuditEntry::new(now, Self::worker_actor(&lease.worker), transition.action())
                .details(json!({ "counts_added": counts.to_json(), "checkpoint": checkpoint.is_some() }))
        });
        let write = RunWrite::renew(now, now + self.lease_for(operation), counts, checkpoint);
        let (id, guard) = (lease.run, lease.guard());
        let run = match self.store.update_runs(&[id], &guard, &write, now, audit.as_ref()).await?.pop() {
            Some(run) => run,
            None => return Err(self.refused(id, transition, &guard).await),
        };
        Ok(LeaseState {
            lease_expires_at: run.lease_expires_at.unwrap_or(now),
            cancel_requested: run.cancel_requested_at.is_some(),
        })
    }
}
