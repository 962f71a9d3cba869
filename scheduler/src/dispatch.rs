//! Dispatch: capture the actor and context, authorize, write the run through
//! `OperationRunService`, then wake the workers. The run row is the job: a
//! wake-up that fails only leaves the run to a worker's next poll.

use std::sync::Arc;

use oprun_shared::{
    AuditEntry, Authorizer, Decision, DispatchRequest, Dispatched, JobQueue, OperationRun, OperationRunService,
    ReasonCode, ServiceError, SourceSurface, StoreError, Transition,
};
use serde::Serialize;
use serde_json::json;
use tracing::{info, warn};

/// Why a dispatch could not be attempted at all.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The request is malformed (unknown operation, bad scope or params):
    /// nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("run store: {0}")]
    Store(#[source] StoreError),
}

impl From<ServiceError> for DispatchError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Store(s) => DispatchError::Store(s),
            other => DispatchError::Invalid(other.to_string()),
        }
    }
}

impl From<StoreError> for DispatchError {
    fn from(e: StoreError) -> Self {
        DispatchError::Store(e)
    }
}

/// What a dispatch did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DispatchOutcome {
    /// The run is queued (or an active run of the same scope was returned).
    Dispatched {
        /// The run.
        run: Box<OperationRun>,
        /// An active run already held the scope.
        deduplicated: bool,
        /// Waking the workers failed; they find the run at their next poll.
        push_failed: bool,
    },
    /// Authorization said no. A scheduled dispatch records a completed/blocked
    /// run; other surfaces an audit row.
    Refused {
        /// The `execution.*` reason.
        reason: ReasonCode,
        /// What is wrong.
        message: String,
        /// The blocked run (scheduled dispatches only).
        run: Option<Box<OperationRun>>,
    },
}

/// Dispatches runs for every surface (scheduler, CLI, API, retry).
#[derive(Clone)]
pub struct Dispatcher {
    service: OperationRunService,
    authorizer: Authorizer,
    queue: Arc<dyn JobQueue>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("service", &self.service).finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher writing through `service` and pushing to `queue`.
    pub fn new(service: OperationRunService, authorizer: Authorizer, queue: Arc<dyn JobQueue>) -> Self {
        Self { service, authorizer, queue }
    }

    /// The service.
    pub fn service(&self) -> &OperationRunService {
        &self.service
    }

    /// The authorizer.
    pub fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// The queue.
    pub fn queue(&self) -> &Arc<dyn JobQueue> {
        &self.queue
    }

    /// Validate, authorize, write, push.
    #[tracing::instrument(name = "dispatch", skip_all, fields(operation = %req.operation, workspace = %req.scope.workspace_id, environment = req.scope.environment_id.as_deref().unwrap_or("-")))]
    pub async fn dispatch(&self, req: DispatchRequest) -> Result<DispatchOutcome, DispatchError> {
        self.service.validate(&req)?;
        let decision = self.authorizer.authorize_dispatch(&req.initiator.id, &req.operation, &req.scope).await?;
        if let Decision::Denied { reason, message } = decision {
            return self.refuse(req, reason, message).await;
        }
        let scheduled = (req.source == SourceSurface::Scheduler).then(|| req.clone());
        let Dispatched { run, deduplicated } = self.service.dispatch(req).await?;
        if let Some(req) = scheduled {
            // Allowed again: the schedule's open refusals in this scope end.
            self.service.close_refusals(&req).await?;
        }
        let mut push_failed = false;
        if deduplicated {
            metrics::counter!("oprun_dispatch_deduplicated_total", "operation" => run.operation.clone()).increment(1);
        } else {
            metrics::counter!("oprun_runs_dispatched_total", "operation" => run.operation.clone(), "source" => run.source_surface.as_str())
                .increment(1);
            if let Err(e) = self.queue.push(run.id).await {
                push_failed = true;
                warn!(run.id = %run.id, error = %e, "run written but the workers were not woken; they find it at their next poll");
            }
            info!(run.id = %run.id, operation = %run.operation, workspace = %run.workspace_id, "dispatched");
        }
        Ok(DispatchOutcome::Dispatched { run: Box::new(run), deduplicated, push_failed })
    }

    /// Dispatch many requests: authorization once per distinct (actor,
    /// operation, scope), the allowed runs written in one transaction, their
    /// jobs pushed in bulk. Per request, in order: the outcome, or why it
    /// was not dispatched (invalid input). A store failure fails the batch
    /// (nothing written).
    #[tracing::instrument(name = "dispatch", skip_all, fields(runs = reqs.len()))]
    pub async fn dispatch_many(
        &self,
        reqs: Vec<DispatchRequest>,
    ) -> Result<Vec<Result<DispatchOutcome, DispatchError>>, DispatchError> {
        let mut out: Vec<Option<Result<DispatchOutcome, DispatchError>>> = Vec::with_capacity(reqs.len());
        let mut decided: Vec<((String, String, oprun_shared::Scope), Decision)> = Vec::new();
        let mut allowed = Vec::new();
        let mut slots = Vec::new();
        for (i, req) in reqs.into_iter().enumerate() {
            if let Err(e) = self.service.validate(&req) {
                out.push(Some(Err(e.into())));
                continue;
            }
            let key = (req.initiator.id.clone(), req.operation.clone(), req.scope.clone());
            let decision = match decided.iter().find(|(k, _)| *k == key) {
                Some((_, d)) => d.clone(),
                None => {
                    let d = self.authorizer.authorize_dispatch(&req.initiator.id, &req.operation, &req.scope).await?;
                    decided.push((key, d.clone()));
                    d
                }
            };
            match decision {
                Decision::Denied { reason, message } => out.push(Some(self.refuse(req, reason, message).await)),
                _ => {
                    allowed.push(req);
                    slots.push(i);
                    out.push(None);
                }
            }
        }
        let written = self.service.dispatch_many(&allowed).await?;
        let mut fresh = Vec::new();
        let mut results = Vec::with_capacity(written.len());
        for r in written {
            match r {
                Ok(Dispatched { run, deduplicated }) => {
                    if deduplicated {
                        metrics::counter!("oprun_dispatch_deduplicated_total", "operation" => run.operation.clone())
                            .increment(1);
                    } else {
                        metrics::counter!("oprun_runs_dispatched_total", "operation" => run.operation.clone(), "source" => run.source_surface.as_str())
                            .increment(1);
                        fresh.push(run.id);
                    }
                    results.push(Ok((run, deduplicated)));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let push_failed = match self.queue.push_many(&fresh).await {
            Ok(()) => false,
            Err(e) => {
                warn!(runs = fresh.len(), error = %e, "runs written but the workers were not woken; they find them at their next poll");
                true
            }
        };
        info!(runs = fresh.len(), "dispatched in bulk");
        for (slot, r) in slots.into_iter().zip(results) {
            out[slot] = Some(match r {
                Ok((run, deduplicated)) => Ok(DispatchOutcome::Dispatched {
                    run: Box::new(run),
                    deduplicated,
                    push_failed: push_failed && !deduplicated,
                }),
                Err(e) => Err(e.into()),
            });
        }
        Ok(out.into_iter().map(|r| r.unwrap_or_else(|| Err(DispatchError::Invalid("not dispatched".into())))).collect())
    }

    async fn refuse(
        &self,
        req: DispatchRequest,
        reason: ReasonCode,
        message: String,
    ) -> Result<DispatchOutcome, DispatchError> {
        info!(operation = %req.operation, workspace = %req.scope.workspace_id, %reason, "dispatch refused: {message}");
        metrics::counter!("oprun_dispatch_refused_total", "reason" => reason.as_str()).increment(1);
        if req.source == SourceSurface::Scheduler {
            let run = self.service.refuse_dispatch(req, reason, &message).await?;
            return Ok(DispatchOutcome::Refused { reason, message, run: Some(Box::new(run)) });
        }
        let now = self.service.clock().now();
        let mut entry = AuditEntry::new(now, req.initiator.clone(), Transition::DispatchRefused.action())
            .reason(reason.as_str())
            .details(json!({
                "operation": req.operation,
                "source_surface": req.source.as_str(),
                "message": message,
                "target_type": req.scope.target_type,
                "target_id": req.scope.target_id,
            }));
        entry.workspace_id = Some(req.scope.workspace_id.clone());
        entry.environment_id = req.scope.environment_id.clone();
        self.service.record(entry).await?;
        Ok(DispatchOutcome::Refused { reason, message, run: None })
    }
}
