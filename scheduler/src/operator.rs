//! Operator and on-call actions — see, retry, cancel, reconcile — authorized
//! against current access truth every time. The CLI (with `--as`) and the
//! HTTP API both go through here, so both answer the same way.
//!
//! Visibility: a run is visible to an actor holding `runs.view` in its
//! workspace; any other run is "not found", with the same message as an id
//! that does not exist.

use std::collections::BTreeSet;

use oprun_shared::{
    Authorizer, Cancelled, Decision, Initiator, OperationRun, OperationRunService, RUNS_RECONCILE, RUNS_RETRY,
    RUNS_VIEW, ReconcileFilter, ReconcileReport, RunDetail, RunFilter, ServiceError, TransitionError, Viewer,
    run_detail,
};
use serde::Serialize;
use uuid::Uuid;

use crate::dispatch::Dispatcher;
use crate::reconciler::reconcile_and_push;

/// Why an operator action was not done. Each maps to one HTTP status and one
/// CLI exit code.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No such run, or one the caller may not see (404).
    #[error("run {0} not found")]
    NotFound(Uuid),
    /// The caller may see the run but not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The run's state does not allow it (409).
    #[error("{0}")]
    Conflict(String),
    /// Bad input (422).
    #[error("{0}")]
    Invalid(String),
    /// The store failed (503).
    #[error("run store: {0}")]
    Store(#[source] oprun_shared::store::BoxError),
}

impl ActionError {
    /// A stable machine code for error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            ActionError::NotFound(_) => "not_found",
            ActionError::Forbidden(_) => "forbidden",
            ActionError::Conflict(_) => "conflict",
            ActionError::Invalid(_) => "invalid_input",
            ActionError::Store(_) => "unavailable",
        }
    }
}

fn store(e: impl std::error::Error + Send + Sync + 'static) -> ActionError {
    ActionError::Store(Box::new(e))
}

fn from_service(id: Uuid, e: ServiceError) -> ActionError {
    match e {
        ServiceError::Transition(TransitionError::NotFound(_)) => ActionError::NotFound(id),
        ServiceError::Transition(t) => ActionError::Conflict(t.to_string()),
        ServiceError::NotRetryable { why, .. } => ActionError::Conflict(format!("run {id} cannot be retried: {why}")),
        ServiceError::Store(s) => store(s),
        other => ActionError::Invalid(other.to_string()),
    }
}

/// What a retry did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retried {
    /// The new run (or the active retry that already existed).
    pub run: OperationRun,
    /// An active retry already existed and was returned.
    pub deduplicated: bool,
    /// Waking the workers failed; they find the run at their next poll.
    pub push_failed: bool,
}

/// What an actor may see of runs: the operator's reads, which need no queue
/// (the CLI's `runs list --as` and `runs show --as` use them alone).
#[derive(Debug, Clone)]
pub struct RunReads {
    service: OperationRunService,
    authorizer: Authorizer,
}

impl RunReads {
    /// Reads through `service`, visibility from `authorizer`.
    pub fn new(service: OperationRunService, authorizer: Authorizer) -> Self {
        Self { service, authorizer }
    }

    /// Workspaces where `actor` may see runs.
    pub async fn visible_workspaces(&self, actor: &str) -> Result<BTreeSet<String>, ActionError> {
        let access = self.authorizer.access();
        Ok(access.workspaces_with(actor, RUNS_VIEW).await.map_err(store)?.into_iter().collect())
    }

    /// Runs `actor` may see, narrowed by `filter`.
    pub async fn list(&self, actor: &str, mut filter: RunFilter) -> Result<Vec<OperationRun>, ActionError> {
        filter.visible_workspaces = Some(self.visible_workspaces(actor).await?.into_iter().collect());
        self.service.list(&filter).await.map_err(store)
    }

    /// A run `actor` may see, and what the actor may do in its workspace.
    pub async fn visible_run(&self, actor: &str, id: Uuid) -> Result<(OperationRun, Viewer), ActionError> {
        let run = self.service.get(id).await.map_err(|e| from_service(id, e))?;
        let viewer = self.authorizer.viewer(actor, &run.workspace_id).await.map_err(store)?;
        if !viewer.can(RUNS_VIEW) {
            return Err(ActionError::NotFound(id));
        }
        Ok((run, viewer))
    }

    /// A run with its guidance for `actor`.
    pub async fn show(&self, actor: &str, id: Uuid) -> Result<RunDetail, ActionError> {
        Ok(self.detail(actor, id).await?.1)
    }

    /// A run `actor` may see, as stored and with its guidance.
    pub async fn detail(&self, actor: &str, id: Uuid) -> Result<(OperationRun, RunDetail), ActionError> {
        let (run, viewer) = self.visible_run(actor, id).await?;
        let visible = self.visible_workspaces(actor).await?;
        let is_visible = |ws: &str| visible.contains(ws);
        let detail = run_detail(&self.service, &run, &viewer, &is_visible).await.map_err(store)?;
        Ok((run, detail))
    }

    /// A run's audit trail, for `actor`.
    pub async fn audit(&self, actor: &str, id: Uuid) -> Result<Vec<oprun_shared::AuditEvent>, ActionError> {
        self.visible_run(actor, id).await?;
        self.service.audit(id).await.map_err(store)
    }
}

/// Operator actions over one dispatcher (service, authorizer, queue).
#[derive(Debug, Clone)]
pub struct Operator {
    dispatcher: Dispatcher,
    reads: RunReads,
}

impl Operator {
    /// Actions through `dispatcher`.
    pub fn new(dispatcher: Dispatcher) -> Self {
        let reads = RunReads::new(dispatcher.service().clone(), dispatcher.authorizer().clone());
        Self { dispatcher, reads }
    }

    /// The dispatcher.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// What actors may see.
    pub fn reads(&self) -> &RunReads {
        &self.reads
    }

    /// Retry a blocked or failed run as `actor`, who must hold `runs.retry`
    /// and the operation's capability in the run's scope now.
    pub async fn retry(&self, actor: &Initiator, id: Uuid) -> Result<Retried, ActionError> {
        let (run, viewer) = self.reads.visible_run(&actor.id, id).await?;
        if !viewer.can(RUNS_RETRY) {
            return Err(ActionError::Forbidden(format!(
                "actor '{}' does not hold '{RUNS_RETRY}' in workspace '{}'",
                actor.id, run.workspace_id
            )));
        }
        let decision = self
            .dispatcher
            .authorizer()
            .authorize_dispatch(&actor.id, &run.operation, &run.scope())
            .await
            .map_err(store)?;
        if let Decision::Denied { reason, message } = decision {
            return Err(ActionError::Forbidden(format!("retry refused ({reason}): {message}")));
        }
        let dispatched = self.dispatcher.service().retry(id, actor).await.map_err(|e| from_service(id, e))?;
        let mut push_failed = false;
        if !dispatched.deduplicated
            && let Err(e) = self.dispatcher.queue().push(dispatched.run.id).await
        {
            push_failed = true;
            tracing::warn!(run.id = %dispatched.run.id, error = %e, "retry written but not pushed; the reconciler re-pushes it");
        }
        Ok(Retried { run: dispatched.run, deduplicated: dispatched.deduplicated, push_failed })
    }

    /// Cancel as `actor` (who must hold `runs.cancel`): a queued run at once,
    /// a running one by request.
    pub async fn cancel(&self, actor: &Initiator, id: Uuid) -> Result<Cancelled, ActionError> {
        let (run, viewer) = self.reads.visible_run(&actor.id, id).await?;
        if !viewer.can(oprun_shared::RUNS_CANCEL) {
            return Err(ActionError::Forbidden(format!(
                "actor '{}' does not hold 'runs.cancel' in workspace '{}'",
                actor.id, run.workspace_id
            )));
        }
        self.dispatcher.service().cancel(id, actor).await.map_err(|e| from_service(id, e))
    }

    /// Reconcile as `actor`, only ever within the workspaces where it holds
    /// `runs.reconcile` now (active ones: a suspended workspace's runs are
    /// left to the automatic reconciler). With a workspace, the actor needs
    /// the capability there; without, the pass covers exactly the
    /// workspaces where it holds it, and an actor that holds it nowhere is
    /// refused. A refusal names no workspace the caller did not name.
    pub async fn reconcile(
        &self,
        actor: &Initiator,
        filter: &ReconcileFilter,
        dry_run: bool,
    ) -> Result<ReconcileReport, ActionError> {
        let access = self.dispatcher.authorizer().access();
        let allowed: BTreeSet<String> =
            access.workspaces_with(&actor.id, RUNS_RECONCILE).await.map_err(store)?.into_iter().collect();
        if let Some(ws) = &filter.workspace_id
            && !allowed.contains(ws)
        {
            return Err(ActionError::Forbidden(format!(
                "actor '{}' does not hold '{RUNS_RECONCILE}' in workspace '{ws}'",
                actor.id
            )));
        }
        if allowed.is_empty() {
            return Err(ActionError::Forbidden(format!(
                "actor '{}' does not hold '{RUNS_RECONCILE}' in any active workspace",
                actor.id
            )));
        }
        let scoped = ReconcileFilter { within: Some(allowed.into_iter().collect()), ..filter.clone() };
        reconcile_and_push(&self.dispatcher, actor, &scoped, dry_run).await.map_err(store)
    }
}
