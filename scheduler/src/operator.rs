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
    RUNS_VIEW, ReconcileFilter, ReconcileReport, RunDetail, RunFilter, RunOutcome, ServiceError, TransitionError,
    Viewer, run_detail,
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
    /// No such schedule, or one in a workspace the caller may not see (404).
    #[error("schedule '{0}' not found")]
    NoSuchSchedule(String),
    /// The store failed (503).
    #[error("run store: {0}")]
    Store(#[source] oprun_shared::store::BoxError),
}

impl ActionError {
    /// A stable machine code for error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            ActionError::NotFound(_) | ActionError::NoSuchSchedule(_) => "not_found",
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

/// The audit action of a refused operator action.
pub const REFUSED_ACTION: &str = "operator.refused";

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
        let detail = run_detail(&self.service, &self.authorizer, &run, &viewer, &is_visible).await.map_err(store)?;
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
    /// and the operation's capability in the run's scope now. A refusal
    /// (403) is audited with the caller.
    pub async fn retry(&self, actor: &Initiator, id: Uuid) -> Result<Retried, ActionError> {
        let r = self.retry_unaudited(actor, id).await;
        self.audit_refusal(actor, "retry", Some(id), r).await
    }

    /// Cancel as `actor` (who must hold `runs.cancel`): a queued run at once,
    /// a running one by request. A refusal (403) is audited with the caller.
    pub async fn cancel(&self, actor: &Initiator, id: Uuid) -> Result<Cancelled, ActionError> {
        let r = self.cancel_unaudited(actor, id).await;
        self.audit_refusal(actor, "cancel", Some(id), r).await
    }

    /// Record a refused operator action (`operator.refused`, with the
    /// caller and what it asked), then hand the result back.
    pub async fn audit_refusal<T>(
        &self,
        actor: &Initiator,
        action: &str,
        run: Option<Uuid>,
        result: Result<T, ActionError>,
    ) -> Result<T, ActionError> {
        if let Err(ActionError::Forbidden(message)) = &result {
            let service = self.dispatcher.service();
            let mut entry = oprun_shared::AuditEntry::new(service.clock().now(), actor.clone(), REFUSED_ACTION)
                .details(serde_json::json!({ "action": action, "run_id": run, "message": message }));
            // The run's workspace is named only when the caller may see it.
            if let Some(id) = run
                && let Ok((r, _)) = self.reads.visible_run(&actor.id, id).await
            {
                entry.workspace_id = Some(r.workspace_id);
            }
            if let Err(e) = service.record(entry).await {
                tracing::warn!(error = %e, "a refused operator action could not be audited");
            }
        }
        result
    }

    async fn retry_unaudited(&self, actor: &Initiator, id: Uuid) -> Result<Retried, ActionError> {
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

    async fn cancel_unaudited(&self, actor: &Initiator, id: Uuid) -> Result<Cancelled, ActionError> {
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
        let r = self.reconcile_unaudited(actor, filter, dry_run).await;
        self.audit_refusal(actor, "reconcile", None, r).await
    }

    async fn reconcile_unaudited(
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

/// An action taken on every run a filter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// Retry blocked and failed runs (runs already retried are left out).
    Retry,
    /// Cancel queued and running runs.
    Cancel,
}

impl BulkAction {
    fn capability(self) -> &'static str {
        match self {
            BulkAction::Retry => RUNS_RETRY,
            BulkAction::Cancel => oprun_shared::RUNS_CANCEL,
        }
    }
}

/// The most runs one action by filter touches unless its caller raises it.
pub const BULK_DEFAULT_MAX: u32 = 1000;
/// The most runs one action by filter may ever touch.
pub const BULK_HARD_MAX: u32 = 10_000;

/// What an action by filter did to one run (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BulkItem {
    /// The run.
    pub run_id: Uuid,
    /// Its operation.
    pub operation: String,
    /// Its workspace and environment.
    pub workspace_id: String,
    /// Its environment.
    pub environment_id: Option<String>,
    /// Its reason code.
    pub reason_code: Option<String>,
    /// `would_retry` / `would_cancel` (dry), `retried`, `deduplicated`,
    /// `cancelled`, `cancel_requested`, `refused` or `conflict`.
    pub result: &'static str,
    /// The retry run, for a retry.
    pub new_run_id: Option<Uuid>,
    /// Why it was refused or in conflict.
    pub message: Option<String>,
}

/// What an action by filter did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BulkReport {
    /// The action.
    pub action: BulkAction,
    /// Nothing was done; `runs` says what would be.
    pub dry_run: bool,
    /// Runs the filter matched (at most `max`).
    pub matched: usize,
    /// More runs matched than `max`: run it again (or raise `max`).
    pub more: bool,
    /// The cap this call used.
    pub max: u32,
    /// Per run, newest first.
    pub runs: Vec<BulkItem>,
}

impl BulkReport {
    /// How many runs ended with `result`.
    pub fn count(&self, result: &str) -> usize {
        self.runs.iter().filter(|r| r.result == result).count()
    }
}

impl Operator {
    /// Retry or cancel every run `filter` matches among those `actor` may
    /// see and act on (a run elsewhere is not matched, as if it did not
    /// exist), at most `max` (default [`BULK_DEFAULT_MAX`], at most
    /// [`BULK_HARD_MAX`]): each run authorized and audited on its own, with
    /// `actor` as the actor, as the one-run action is; dedup holds (a run
    /// with an active retry gets it back). `dry_run` lists them and does
    /// nothing. A pass that acted is also audited as one summary row.
    pub async fn act_on_filter(
        &self,
        actor: &Initiator,
        action: BulkAction,
        mut filter: RunFilter,
        max: Option<u32>,
        dry_run: bool,
    ) -> Result<BulkReport, ActionError> {
        let max = max.unwrap_or(BULK_DEFAULT_MAX);
        if !(1..=BULK_HARD_MAX).contains(&max) {
            return Err(ActionError::Invalid(format!("max must be 1–{BULK_HARD_MAX}, got {max}")));
        }
        let access = self.dispatcher.authorizer().access();
        let allowed = access.workspaces_with(&actor.id, action.capability()).await.map_err(store)?;
        if allowed.is_empty() {
            let refused = Err(ActionError::Forbidden(format!(
                "actor '{}' does not hold '{}' in any active workspace",
                actor.id,
                action.capability()
            )));
            return self.audit_refusal(actor, &format!("{action:?}_by_filter").to_lowercase(), None, refused).await;
        }
        filter.visible_workspaces = Some(self.reads.visible_workspaces(&actor.id).await?.into_iter().collect());
        filter.workspace_in = Some(allowed);
        let candidates = self.candidates(action, filter, max as usize).await?;
        let more = candidates.len() > max as usize;
        let mut runs = Vec::with_capacity(candidates.len().min(max as usize));
        for run in candidates.into_iter().take(max as usize) {
            let mut item = BulkItem {
                run_id: run.id,
                operation: run.operation.clone(),
                workspace_id: run.workspace_id.clone(),
                environment_id: run.environment_id.clone(),
                reason_code: run.reason_code.clone(),
                result: match action {
                    BulkAction::Retry => "would_retry",
                    BulkAction::Cancel => "would_cancel",
                },
                new_run_id: None,
                message: None,
            };
            if !dry_run {
                let done = match action {
                    BulkAction::Retry => self.retry(actor, run.id).await.map(|r| {
                        item.new_run_id = Some(r.run.id);
                        if r.deduplicated { "deduplicated" } else { "retried" }
                    }),
                    BulkAction::Cancel => self.cancel(actor, run.id).await.map(|c| match c {
                        Cancelled::Cancelled(_) => "cancelled",
                        Cancelled::Requested(_) => "cancel_requested",
                    }),
                };
                item.result = match done {
                    Ok(r) => r,
                    Err(e @ ActionError::Store(_)) => return Err(e),
                    Err(e @ ActionError::Forbidden(_)) => {
                        item.message = Some(e.to_string());
                        "refused"
                    }
                    Err(e) => {
                        item.message = Some(e.to_string());
                        "conflict"
                    }
                };
            }
            runs.push(item);
        }
        let report = BulkReport { action, dry_run, matched: runs.len(), more, max, runs };
        if !dry_run {
            let service = self.dispatcher.service();
            let results: std::collections::BTreeMap<&str, usize> =
                report.runs.iter().fold(Default::default(), |mut m, r| {
                    *m.entry(r.result).or_default() += 1;
                    m
                });
            let entry = oprun_shared::AuditEntry::new(
                service.clock().now(),
                actor.clone(),
                format!("runs.{}_by_filter", if action == BulkAction::Retry { "retry" } else { "cancel" }),
            )
            .details(serde_json::json!({ "matched": report.matched, "more": more, "max": max, "results": results }));
            service.record(entry).await.map_err(store)?;
        }
        Ok(report)
    }

    /// The runs an action by filter would touch, newest first, at most
    /// `max + 1` (to tell whether there are more): for a retry, completed
    /// blocked or failed runs (or the outcome the filter names) that no run
    /// retries yet; for a cancel, queued and running runs.
    async fn candidates(
        &self,
        action: BulkAction,
        mut filter: RunFilter,
        max: usize,
    ) -> Result<Vec<OperationRun>, ActionError> {
        let service = self.dispatcher.service();
        let mut out = Vec::new();
        filter.limit = oprun_shared::store::MAX_PAGE;
        // Already retried: only an active retry is returned again (dedup); a
        // finished one is history.
        filter.without_finished_retry = action == BulkAction::Retry;
        loop {
            let page = service.list(&filter).await.map_err(store)?;
            let full = page.len() == filter.limit as usize;
            filter.before = page.last().map(|r| r.id);
            for run in page {
                let wanted = match action {
                    BulkAction::Retry => {
                        run.status == oprun_shared::RunStatus::Completed
                            && match filter.outcome {
                                Some(o) => run.outcome == o,
                                None => matches!(run.outcome, RunOutcome::Blocked | RunOutcome::Failed),
                            }
                    }
                    BulkAction::Cancel => run.status != oprun_shared::RunStatus::Completed,
                };
                if !wanted {
                    continue;
                }
                out.push(run);
                if out.len() > max {
                    return Ok(out);
                }
            }
            if !full {
                return Ok(out);
            }
        }
    }
}
