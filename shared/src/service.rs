//! `OperationRunService`: the single owner of every run transition.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::instrument;
use uuid::Uuid;

use crate::audit::{AuditEntry, AuditEvent};
use crate::catalog::{Catalog, DedupPolicy, OperationSpec, ScopeKind};
use crate::clock::Clock;
use crate::counts::{CountsError, SummaryCounts};
use crate::lifecycle::{RunOutcome, RunStatus, SourceSurface, Transition, TransitionError};
use crate::reason::ReasonCode;
use crate::redact;
use crate::run::{FailureEntry, Initiator, MAX_FAILURE_ENTRIES, OperationRun, Scope};
use crate::store::{Change, Guard, Inserted, RunFilter, RunStore, StaleRun, StoreError, Update};

/// Largest captured context or params document, serialized.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Longest id (workspace, environment, target, actor).
pub const MAX_ID_LEN: usize = 200;

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

/// A request to start a run.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchRequest {
    /// The operation type.
    pub operation: String,
    /// Where it acts.
    pub scope: Scope,
    /// Who starts it.
    pub initiator: Initiator,
    /// From where.
    pub source: SourceSurface,
    /// The captured dispatch context (schedule, correlation id, …).
    pub context: Value,
    /// The operation's parameters.
    pub params: Value,
}

/// A dispatched run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dispatched {
    /// The run (the existing one when deduplicated).
    pub run: OperationRun,
    /// Whether an active run of the same operation and scope was returned
    /// instead of writing a new one.
    pub deduplicated: bool,
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
}

/// How a run ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// A terminal outcome.
    pub outcome: RunOutcome,
    /// Why (required for failed and blocked).
    pub reason_code: Option<String>,
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
    pub fn failed(outcome: RunOutcome, reason: impl Into<String>, message: &str) -> Self {
        let reason = reason.into();
        Self {
            outcome,
            failures: vec![FailureEntry { reason_code: reason.clone(), message: redact::sanitize(message) }],
            reason_code: Some(reason),
            counts: SummaryCounts::new(),
            checkpoint: None,
        }
    }
}

/// What cancel did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", content = "run", rename_all = "snake_case")]
pub enum Cancelled {
    /// The queued run is now completed/cancelled.
    Cancelled(OperationRun),
    /// The running run carries a cancel request; its worker ends it.
    Requested(OperationRun),
}

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

    fn guard(&self) -> Guard {
        Guard::lease(&self.worker, self.attempt)
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

/// Narrows reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReconcileFilter {
    /// Only this operation.
    pub operation: Option<String>,
    /// Only this workspace.
    pub workspace_id: Option<String>,
    /// Only these workspaces: the reach of the caller (an operator's
    /// reconcile without a workspace covers the workspaces where it holds
    /// `runs.reconcile`, never every run); `Some(empty)` reconciles nothing.
    pub within: Option<Vec<String>>,
}

/// What the reconciler did (or, dry, would do) to one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileKind {
    /// Lease expired; attempts remain: back to queued, attempt + 1.
    Requeued,
    /// Lease expired; no attempts left or not resumable: failed `run.lease_expired`.
    ExpiredLease,
    /// Lease expired on a run an operator asked to cancel: cancelled.
    CancelledStale,
    /// Queued too long: its job is pushed again.
    Repush,
    /// Queued far too long: failed `run.never_started`.
    ExpiredNeverStarted,
}

impl ReconcileKind {
    /// The run's job must be pushed (again) to the queue.
    pub fn needs_push(self) -> bool {
        matches!(self, ReconcileKind::Requeued | ReconcileKind::Repush)
    }
}

/// One line of a reconciliation report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReconcileAction {
    /// The run.
    pub run_id: Uuid,
    /// Its operation.
    pub operation: String,
    /// Its workspace.
    pub workspace_id: String,
    /// What happened.
    pub kind: ReconcileKind,
    /// Status before.
    pub from_status: RunStatus,
    /// Status after.
    pub to_status: RunStatus,
    /// The attempt after.
    pub attempt: i32,
    /// The reason code.
    pub reason_code: String,
    /// Why, in words.
    pub why: String,
}

/// What a reconciliation did.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ReconcileReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Per run.
    pub actions: Vec<ReconcileAction>,
    /// Candidates another process moved first.
    pub lost_races: usize,
}

/// What one reconcile write did (a page's share of the report).
#[derive(Debug, Default)]
struct PageResult {
    actions: Vec<ReconcileAction>,
    lost_races: usize,
}

impl PageResult {
    fn append(&mut self, mut other: PageResult) {
        self.actions.append(&mut other.actions);
        self.lost_races += other.lost_races;
    }
}

/// The reconciler's write that fails a run with `reason` (on top of `base`).
fn failed_change(reason: ReasonCode, message: &str, now: DateTime<Utc>, base: Change) -> Change {
    Change {
        status: Some(RunStatus::Completed),
        outcome: Some(RunOutcome::Failed),
        reason_code: Some(Some(reason.as_str().into())),
        failure_summary: Some(vec![FailureEntry { reason_code: reason.as_str().into(), message: message.into() }]),
        completed_at: Some(now),
        ..base
    }
}

/// Reconcile writes of consecutive pages that may run at once (each on a
/// connection of its own).
const RECONCILE_WRITES_IN_FLIGHT: usize = 4;

/// Where the pages of a reconcile pass go: into the report, and (unless a
/// dry run) their runs to push into the caller's channel.
struct ReportSink<'a> {
    report: &'a mut ReconcileReport,
    to_push: Option<&'a tokio::sync::mpsc::UnboundedSender<Vec<Uuid>>>,
}

impl ReportSink<'_> {
    fn absorb(&mut self, page: PageResult) {
        if let Some(tx) = self.to_push.filter(|_| !self.report.dry_run) {
            let ids: Vec<Uuid> = page.actions.iter().filter(|a| a.kind.needs_push()).map(|a| a.run_id).collect();
            if !ids.is_empty() {
                // The receiver gone means the caller stopped pushing; the
                // next pass re-pushes what stayed queued.
                let _ = tx.send(ids);
            }
        }
        self.report.actions.extend(page.actions);
        self.report.lost_races += page.lost_races;
    }
}

impl ReconcileReport {
    /// Runs whose job must be pushed (again) to the queue.
    pub fn to_push(&self) -> Vec<Uuid> {
        self.actions.iter().filter(|a| a.kind.needs_push()).map(|a| a.run_id).collect()
    }

    /// How many actions of a kind.
    pub fn count(&self, kind: ReconcileKind) -> usize {
        self.actions.iter().filter(|a| a.kind == kind).count()
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

/// One part of a dedup key, written so that no two scopes share a key:
/// the separator and the escape character are percent-encoded, and an id
/// that is literally `-` is told apart from a part that is absent (`-`).
/// Ids without `|`, `%` or a lone `-` keep the key they always had.
fn key_part(v: Option<&str>) -> std::borrow::Cow<'_, str> {
    match v {
        None => "-".into(),
        Some("-") => "%2D".into(),
        Some(v) if v.contains(['|', '%']) => v.replace('%', "%25").replace('|', "%7C").into(),
        Some(v) => v.into(),
    }
}

fn check_id(field: &str, v: &str) -> Result<(), ServiceError> {
    if v.trim().is_empty() {
        return Err(ServiceError::InvalidInput(format!("{field} must not be empty")));
    }
    if v.len() > MAX_ID_LEN || v.chars().any(char::is_control) {
        return Err(ServiceError::InvalidInput(format!("{field} must be at most {MAX_ID_LEN} printable characters")));
    }
    Ok(())
}

fn check_document(field: &str, v: &Value) -> Result<(), ServiceError> {
    if !v.is_object() {
        return Err(ServiceError::InvalidInput(format!("{field} must be a JSON object")));
    }
    if let Some(path) = redact::find_secret_key(v) {
        return Err(ServiceError::InvalidInput(format!(
            "{field} holds a secret-named key '{field}.{path}': pass secrets through provider configuration, never in runs"
        )));
    }
    let size = v.to_string().len();
    if size > MAX_DOCUMENT_BYTES {
        return Err(ServiceError::InvalidInput(format!("{field} is {size} bytes; the limit is {MAX_DOCUMENT_BYTES}")));
    }
    Ok(())
}

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

    /// The dedup key of an operation in a scope, if its policy deduplicates.
    pub fn dedup_key(&self, operation: &str, scope: &Scope) -> Result<Option<String>, ServiceError> {
        Ok(match self.spec(operation)?.dedup {
            DedupPolicy::None => None,
            DedupPolicy::OnePerScope => Some(format!(
                "{}|{}|{}|{}|{}",
                key_part(Some(operation)),
                key_part(Some(&scope.workspace_id)),
                key_part(scope.environment_id.as_deref()),
                key_part(scope.target_type.as_deref()),
                key_part(scope.target_id.as_deref()),
            )),
        })
    }

    /// Validate a dispatch request without writing anything.
    pub fn validate(&self, req: &DispatchRequest) -> Result<&OperationSpec, ServiceError> {
        let spec = self.spec(&req.operation)?;
        check_id("workspace", &req.scope.workspace_id)?;
        check_id("actor", &req.initiator.id)?;
        match (spec.scope, &req.scope.environment_id) {
            (ScopeKind::Environment, None) => {
                return Err(ServiceError::InvalidInput(format!(
                    "operation '{}' acts on a managed environment: an environment is required",
                    req.operation
                )));
            }
            (ScopeKind::Workspace, Some(_)) => {
                return Err(ServiceError::InvalidInput(format!(
                    "operation '{}' acts on a whole workspace: do not name an environment",
                    req.operation
                )));
            }
            (_, Some(env)) => check_id("environment", env)?,
            _ => {}
        }
        for (field, v) in [("target type", &req.scope.target_type), ("target id", &req.scope.target_id)] {
            if let Some(v) = v {
                check_id(field, v)?;
            }
        }
        check_document("params", &req.params)?;
        check_document("context", &req.context)?;
        Ok(spec)
    }

    fn new_run(
        &self,
        req: &DispatchRequest,
        spec: &OperationSpec,
        now: DateTime<Utc>,
    ) -> Result<OperationRun, ServiceError> {
        Ok(OperationRun {
            id: Uuid::now_v7(),
            operation: req.operation.clone(),
            workspace_id: req.scope.workspace_id.clone(),
            environment_id: req.scope.environment_id.clone(),
            target_type: req.scope.target_type.clone(),
            target_id: req.scope.target_id.clone(),
            initiator: req.initiator.clone(),
            source_surface: req.source,
            context: req.context.clone(),
            params: req.params.clone(),
            dedup_key: self.dedup_key(&req.operation, &req.scope)?,
            status: RunStatus::Queued,
            outcome: RunOutcome::Pending,
            reason_code: None,
            failure_summary: vec![],
            summary_counts: SummaryCounts::new(),
            checkpoint: None,
            attempt: 1,
            max_attempts: i32::try_from(spec.max_attempts).unwrap_or(i32::MAX),
            retry_of: None,
            lease_owner: None,
            lease_expires_at: None,
            heartbeat_at: None,
            cancel_requested_at: None,
            queued_at: now,
            repushed_at: None,
            created_at: now,
            started_at: None,
            completed_at: None,
            updated_at: now,
        })
    }

    /// Dispatch: write the run queued, or return the active run that holds
    /// its dedup key. Authorization is the caller's (see `Authorizer`).
    #[instrument(skip_all, fields(operation = %req.operation, workspace = %req.scope.workspace_id), err)]
    pub async fn dispatch(&self, req: DispatchRequest) -> Result<Dispatched, ServiceError> {
        let spec = self.validate(&req)?;
        let now = self.clock.now();
        let run = self.new_run(&req, spec, now)?;
        let audit = AuditEntry::new(now, req.initiator.clone(), Transition::Dispatch.action())
            .details(json!({ "source_surface": req.source.as_str() }));
        self.insert(run, &[audit]).await
    }

    /// Dispatch many runs in one transaction (one commit, multi-row
    /// statements). The outer error is a store failure (nothing written);
    /// the inner results are per request, in order (a request that does not
    /// validate is refused alone). Authorization is the caller's.
    #[instrument(skip_all, fields(runs = reqs.len()), err)]
    pub async fn dispatch_many(
        &self,
        reqs: &[DispatchRequest],
    ) -> Result<Vec<Result<Dispatched, ServiceError>>, ServiceError> {
        let now = self.clock.now();
        let mut out: Vec<Option<Result<Dispatched, ServiceError>>> = Vec::with_capacity(reqs.len());
        let mut rows = Vec::with_capacity(reqs.len());
        let mut slots = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.iter().enumerate() {
            match self.validate(req).and_then(|spec| self.new_run(req, spec, now)) {
                Ok(run) => {
                    let audit = AuditEntry::new(now, req.initiator.clone(), Transition::Dispatch.action())
                        .details(json!({ "source_surface": req.source.as_str() }));
                    rows.push((run, audit));
                    slots.push(i);
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let inserted = self.store.insert_runs(&rows).await?;
        for (slot, ins) in slots.into_iter().zip(inserted) {
            out[slot] = Some(Ok(match ins {
                Inserted::New(run) => Dispatched { run, deduplicated: false },
                Inserted::Existing(run) => Dispatched { run, deduplicated: true },
            }));
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ServiceError::InvalidInput("not dispatched".into()))))
            .collect())
    }

    async fn insert(&self, run: OperationRun, audit: &[AuditEntry]) -> Result<Dispatched, ServiceError> {
        Ok(match self.store.insert_run(&run, audit).await? {
            Inserted::New(run) => Dispatched { run, deduplicated: false },
            Inserted::Existing(run) => Dispatched { run, deduplicated: true },
        })
    }

    /// Dispatch refused (a scheduled dispatch that authorization said no to):
    /// write a completed/blocked run that on-call can see.
    #[instrument(skip_all, fields(operation = %req.operation, workspace = %req.scope.workspace_id), err)]
    pub async fn refuse_dispatch(
        &self,
        req: DispatchRequest,
        reason: ReasonCode,
        message: &str,
    ) -> Result<OperationRun, ServiceError> {
        let spec = self.validate(&req)?;
        let now = self.clock.now();
        let mut run = self.new_run(&req, spec, now)?;
        run.dedup_key = None;
        run.status = RunStatus::Completed;
        run.outcome = RunOutcome::Blocked;
        run.reason_code = Some(reason.as_str().to_string());
        run.failure_summary =
            vec![FailureEntry { reason_code: reason.as_str().into(), message: redact::sanitize(message) }];
        run.completed_at = Some(now);
        let audit = AuditEntry::new(now, req.initiator.clone(), Transition::DispatchRefused.action())
            .reason(reason.as_str())
            .details(json!({ "source_surface": req.source.as_str(), "message": redact::sanitize(message) }));
        Ok(self.insert(run, &[audit]).await?.run)
    }

    /// Turn "zero rows written" into the error that says why.
    async fn refused(&self, id: Uuid, transition: Transition, guard: &Guard) -> ServiceError {
        match self.store.get_run(id).await {
            Err(e) => e.into(),
            Ok(None) => TransitionError::NotFound(id).into(),
            Ok(Some(run)) => {
                let lease_transition = guard.lease_owner.is_some();
                let owner_differs =
                    run.lease_owner != guard.lease_owner || guard.attempt.is_some_and(|a| a != run.attempt);
                // A lease holder that finds the run requeued or held by another
                // worker has lost its lease; a completed run is simply closed.
                if lease_transition
                    && run.status != RunStatus::Completed
                    && (run.status != RunStatus::Running || owner_differs)
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

    async fn one(
        &self,
        id: Uuid,
        transition: Transition,
        guard: Guard,
        change: Change,
        audit: AuditEntry,
    ) -> Result<OperationRun, ServiceError> {
        let mut written = self.store.update_runs(&[id], &guard, &change, audit.at, Some(&audit)).await?;
        match written.pop() {
            Some(run) => Ok(run),
            None => Err(self.refused(id, transition, &guard).await),
        }
    }

    fn worker_actor(worker: &str) -> Initiator {
        Initiator::service(format!("worker:{worker}"))
    }

    fn lease_for(&self, operation: &str) -> chrono::Duration {
        chrono_dur(self.catalog.get(operation).map_or_else(crate::catalog::defaults::lease, |s| s.lease))
    }

    /// Claim a queued run for `worker`: running, leased.
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

    /// Claim many queued runs of one operation in one statement; returns those
    /// claimed (the others were not queued any more).
    pub async fn claim_many(
        &self,
        ids: &[Uuid],
        operation: &str,
        worker: &str,
    ) -> Result<Vec<OperationRun>, ServiceError> {
        let now = self.clock.now();
        let lease_ends =
            crate::store::LeaseEnds { by_operation: Vec::new(), otherwise: now + self.lease_for(operation) };
        let (change, audit) = Self::claim_write(worker, now, lease_ends);
        Ok(self.store.update_runs(ids, &Guard::from(RunStatus::Queued), &change, now, Some(&audit)).await?)
    }

    /// The write that claims queued runs for `worker`, leased until
    /// `lease_ends`, and its audit row.
    fn claim_write(worker: &str, now: DateTime<Utc>, lease_ends: crate::store::LeaseEnds) -> (Change, AuditEntry) {
        let change = Change {
            status: Some(RunStatus::Running),
            lease_owner: Some(Some(worker.to_string())),
            lease_ends: Some(lease_ends),
            heartbeat_at: Some(Some(now)),
            started_at: Some(now),
            ..Change::default()
        };
        (change, AuditEntry::new(now, Self::worker_actor(worker), Transition::Claim.action()))
    }

    /// Claim the delivered runs `ids` for `worker`: one guarded write for the
    /// whole batch (the lease length, which is the operation's, is chosen
    /// inside the statement), and a read only of the runs it did not claim,
    /// to say why. Results are in the order of `ids`.
    #[instrument(name = "claim", skip_all, fields(runs = ids.len(), worker = %worker), err)]
    pub async fn claim_batch(&self, ids: &[Uuid], worker: &str) -> Result<Vec<Claim>, ServiceError> {
        let now = self.clock.now();
        let mut unique = Vec::with_capacity(ids.len());
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for id in ids {
            if seen.insert(*id) {
                unique.push(*id);
            }
        }
        let default_lease = crate::catalog::defaults::lease();
        let lease_ends = crate::store::LeaseEnds {
            by_operation: (self.catalog.operations.iter())
                .filter(|(_, spec)| spec.lease != default_lease)
                .map(|(op, spec)| (op.clone(), now + chrono_dur(spec.lease)))
                .collect(),
            otherwise: now + chrono_dur(default_lease),
        };
        let (change, audit) = Self::claim_write(worker, now, lease_ends);
        let mut claimed: std::collections::HashMap<Uuid, OperationRun> = (self.store)
            .update_runs(&unique, &Guard::from(RunStatus::Queued), &change, now, Some(&audit))
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        // A second delivery of one id in the batch finds it already running.
        let mut out: Vec<Option<Claim>> =
            ids.iter().map(|id| claimed.remove(id).map(|run| Claim::Claimed(Box::new(run)))).collect();
        let missed: Vec<Uuid> = ids.iter().zip(&out).filter(|(_, c)| c.is_none()).map(|(id, _)| *id).collect();
        if !missed.is_empty() {
            let status: std::collections::HashMap<Uuid, RunStatus> =
                self.store.get_runs(&missed).await?.into_iter().map(|r| (r.id, r.status)).collect();
            for (slot, id) in out.iter_mut().zip(ids) {
                if slot.is_none() {
                    *slot = Some(status.get(id).map_or(Claim::NotFound, |s| Claim::NotQueued(*s)));
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// The guarded write that completes a run.
    fn completion_write(
        &self,
        lease: &Lease,
        completion: &Completion,
        now: DateTime<Utc>,
    ) -> Result<(Guard, Change, AuditEntry), ServiceError> {
        if !completion.outcome.is_terminal() {
            return Err(ServiceError::InvalidInput("a run cannot complete with outcome pending".into()));
        }
        if matches!(completion.outcome, RunOutcome::Failed | RunOutcome::Blocked) && completion.reason_code.is_none() {
            return Err(ServiceError::InvalidInput(format!("a {} run needs a reason code", completion.outcome)));
        }
        let reason = match completion.outcome {
            RunOutcome::Cancelled => {
                completion.reason_code.clone().or(Some(ReasonCode::RunCancelledByOperator.as_str().into()))
            }
            _ => completion.reason_code.clone(),
        };
        let change = Change {
            status: Some(RunStatus::Completed),
            outcome: Some(completion.outcome),
            reason_code: Some(reason.clone()),
            failure_summary: Some(bounded_failures(&completion.failures)),
            counts_add: Some(completion.counts.clone()),
            checkpoint: completion.checkpoint.clone().map(Some),
            lease_owner: Some(None),
            lease_expires_at: Some(None),
            completed_at: Some(now),
            ..Change::default()
        };
        let mut audit = AuditEntry::new(now, Self::worker_actor(&lease.worker), Transition::Complete.action());
        audit.reason_code = reason;
        Ok((lease.guard(), change, audit))
    }

    /// The guarded write that blocks a run.
    fn block_write(
        from: &BlockFrom,
        reason: ReasonCode,
        message: &str,
        now: DateTime<Utc>,
    ) -> (Guard, Change, AuditEntry) {
        let (guard, actor) = match from {
            BlockFrom::Queued => (Guard::from(RunStatus::Queued), Initiator::service("oprun")),
            BlockFrom::Lease(lease) => (lease.guard(), Self::worker_actor(&lease.worker)),
        };
        let change = Change {
            status: Some(RunStatus::Completed),
            outcome: Some(RunOutcome::Blocked),
            reason_code: Some(Some(reason.as_str().into())),
            failure_summary: Some(vec![FailureEntry {
                reason_code: reason.as_str().into(),
                message: redact::sanitize(message),
            }]),
            lease_owner: Some(None),
            lease_expires_at: Some(None),
            completed_at: Some(now),
            ..Change::default()
        };
        let audit = AuditEntry::new(now, actor, Transition::Block.action())
            .reason(reason.as_str())
            .details(json!({ "message": redact::sanitize(message) }));
        (guard, change, audit)
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
            let write = match finish {
                Finish::Complete(c) => self.completion_write(lease, c, now).map(|w| (w, Transition::Complete)),
                Finish::Block { reason, message } => {
                    Ok((Self::block_write(&BlockFrom::Lease(lease.clone()), *reason, message, now), Transition::Block))
                }
            };
            let id = &lease.run;
            match write {
                Err(e) => slot_of.push(Err(e)),
                Ok(((guard, change, audit), transition)) => {
                    let at = match updates
                        .iter()
                        .position(|u| u.guard == guard && u.change == change && u.audit.as_ref() == Some(&audit))
                    {
                        Some(i) => i,
                        None => {
                            updates.push(Update { ids: Vec::new(), guard, change, audit: Some(audit) });
                            updates.len() - 1
                        }
                    };
                    updates[at].ids.push(*id);
                    slot_of.push(Ok((at, transition)));
                }
            }
        }
        let written = self.store.update_batch(&updates, now).await?;
        let mut by_id: std::collections::HashMap<Uuid, OperationRun> =
            written.into_iter().flatten().map(|r| (r.id, r)).collect();
        let mut out = Vec::with_capacity(items.len());
        for ((lease, _), slot) in items.iter().zip(slot_of) {
            let id = &lease.run;
            out.push(match slot {
                Err(e) => Err(e),
                Ok((at, transition)) => match by_id.remove(id) {
                    Some(run) => Ok(run),
                    None => Err(self.refused(*id, transition, &updates[at].guard).await),
                },
            });
        }
        Ok(out)
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
        let change = Change {
            lease_expires_at: Some(Some(now + self.lease_for(operation))),
            heartbeat_at: Some(Some(now)),
            counts_add: Some(counts.clone()),
            checkpoint: checkpoint.clone().map(Some),
            ..Change::default()
        };
        let (id, guard) = (lease.run, lease.guard());
        // Heartbeats are not audited: they change nothing an operator acts on.
        let audit = (!heartbeat_only).then(|| {
            AuditEntry::new(now, Self::worker_actor(&lease.worker), transition.action())
                .details(json!({ "counts_added": counts.to_json(), "checkpoint": checkpoint.is_some() }))
        });
        let run = match self.store.update_runs(&[id], &guard, &change, now, audit.as_ref()).await?.pop() {
            Some(run) => run,
            None => return Err(self.refused(id, transition, &guard).await),
        };
        Ok(LeaseState {
            lease_expires_at: run.lease_expires_at.unwrap_or(now),
            cancel_requested: run.cancel_requested_at.is_some(),
        })
    }

    /// Complete a running run. Only the attempt that holds the lease may.
    #[instrument(skip_all, fields(run.id = %lease.run, outcome = %completion.outcome), err)]
    pub async fn complete(&self, lease: &Lease, completion: Completion) -> Result<OperationRun, ServiceError> {
        let now = self.clock.now();
        let (guard, change, audit) = self.completion_write(lease, &completion, now)?;
        self.one(lease.run, Transition::Complete, guard, change, audit).await
    }

    /// Block a run (reauthorization said no): completed/blocked with an
    /// `execution.*` (or `provider.permission_missing`) reason.
    #[instrument(skip_all, fields(run.id = %id, reason = %reason), err)]
    pub async fn block(
        &self,
        id: Uuid,
        from: BlockFrom,
        reason: ReasonCode,
        message: &str,
    ) -> Result<OperationRun, ServiceError> {
        let now = self.clock.now();
        let (guard, change, audit) = Self::block_write(&from, reason, message, now);
        self.one(id, Transition::Block, guard, change, audit).await
    }

    /// Cancel: a queued run ends cancelled at once; a running run gets a
    /// cancel request that its lease owner honours.
    #[instrument(skip_all, fields(run.id = %id), err)]
    pub async fn cancel(&self, id: Uuid, actor: &Initiator) -> Result<Cancelled, ServiceError> {
        let now = self.clock.now();
        let change = Change {
            status: Some(RunStatus::Completed),
            outcome: Some(RunOutcome::Cancelled),
            reason_code: Some(Some(ReasonCode::RunCancelledByOperator.as_str().into())),
            completed_at: Some(now),
            cancel_requested_at: Some(now),
            ..Change::default()
        };
        let audit = AuditEntry::new(now, actor.clone(), Transition::Cancel.action())
            .reason(ReasonCode::RunCancelledByOperator.as_str());
        let guard = Guard::from(RunStatus::Queued);
        if let Some(run) = self.store.update_runs(&[id], &guard, &change, now, Some(&audit)).await?.pop() {
            return Ok(Cancelled::Cancelled(run));
        }
        let change = Change { cancel_requested_at: Some(now), ..Change::default() };
        let audit = AuditEntry::new(now, actor.clone(), Transition::CancelRequest.action());
        let guard = Guard::from(RunStatus::Running);
        if let Some(run) = self.store.update_runs(&[id], &guard, &change, now, Some(&audit)).await?.pop() {
            return Ok(Cancelled::Requested(run));
        }
        Err(self.refused(id, Transition::Cancel, &Guard::from(RunStatus::Queued)).await)
    }

    /// Retry a completed blocked or failed run: a new queued run that links
    /// back to it. Authorization of `actor` is the caller's.
    #[instrument(skip_all, fields(run.id = %id), err)]
    pub async fn retry(&self, id: Uuid, actor: &Initiator) -> Result<Dispatched, ServiceError> {
        let old = self.store.get_run(id).await?.ok_or(TransitionError::NotFound(id))?;
        let spec = self.spec(&old.operation)?;
        let not = |why: String| ServiceError::NotRetryable { id, why };
        if old.status != RunStatus::Completed {
            return Err(not(format!("it is still {}", old.status)));
        }
        let retryable_outcome = match old.outcome {
            RunOutcome::Blocked | RunOutcome::Failed => true,
            RunOutcome::PartiallySucceeded => spec.retry_partial,
            _ => false,
        };
        if !retryable_outcome {
            return Err(not(format!("its outcome is {}", old.outcome)));
        }
        if !spec.retryable_by_operators {
            return Err(not(format!("operation '{}' is not retryable by operators", old.operation)));
        }
        let now = self.clock.now();
        let mut context = match &old.context {
            Value::Object(m) => m.clone(),
            _ => Default::default(),
        };
        context.insert("source_surface".into(), json!(SourceSurface::Retry.as_str()));
        context.insert("retry_of".into(), json!(old.id));
        let req = DispatchRequest {
            operation: old.operation.clone(),
            scope: old.scope(),
            initiator: actor.clone(),
            source: SourceSurface::Retry,
            context: Value::Object(context),
            params: old.params.clone(),
        };
        let mut run = self.new_run(&req, spec, now)?;
        run.retry_of = Some(old.id);
        if run.dedup_key.is_none() {
            run.dedup_key = Some(format!("retry|{}", old.id));
        }
        if spec.resumable {
            run.checkpoint = old.checkpoint.clone();
        }
        let on_new =
            AuditEntry::new(now, actor.clone(), Transition::Retry.action()).details(json!({ "retry_of": old.id }));
        let mut on_old = AuditEntry::new(now, actor.clone(), "run.retried").details(json!({ "retry_run_id": run.id }));
        on_old.run_id = Some(old.id);
        on_old.workspace_id = Some(old.workspace_id.clone());
        on_old.environment_id = old.environment_id.clone();
        on_old.to_status = Some(old.status);
        on_old.outcome = Some(old.outcome);
        self.insert(run, &[on_new, on_old]).await
    }

    /// Move stale runs on (see DESIGN.md, "Reconcile"). Pages through the
    /// candidates; every change is a guarded write audited as `actor`; safe
    /// with several reconcilers at once; `dry_run` writes nothing.
    pub async fn reconcile(
        &self,
        actor: &Initiator,
        filter: &ReconcileFilter,
        dry_run: bool,
    ) -> Result<ReconcileReport, ServiceError> {
        self.reconcile_streaming(actor, filter, dry_run, None).await
    }

    /// As [`reconcile`](Self::reconcile); and as soon as a page is written,
    /// sends the ids of its runs whose job must be pushed (again) to
    /// `to_push`, so that the caller pushes while later pages are reconciled.
    #[instrument(name = "reconcile", skip_all, fields(dry_run, actor = %actor.id), err)]
    pub async fn reconcile_streaming(
        &self,
        actor: &Initiator,
        filter: &ReconcileFilter,
        dry_run: bool,
        to_push: Option<&tokio::sync::mpsc::UnboundedSender<Vec<Uuid>>>,
    ) -> Result<ReconcileReport, ServiceError> {
        let now = self.clock.now();
        let mut report = ReconcileReport { dry_run, ..Default::default() };
        let mut sink = ReportSink { report: &mut report, to_push };
        self.reconcile_running(now, actor, filter, dry_run, &mut sink).await?;
        self.reconcile_queued(now, actor, filter, dry_run, &mut sink).await?;
        Ok(report)
    }

    async fn reconcile_running(
        &self,
        now: DateTime<Utc>,
        actor: &Initiator,
        filter: &ReconcileFilter,
        dry_run: bool,
        report: &mut ReportSink<'_>,
    ) -> Result<(), ServiceError> {
        let cutoff = now - chrono_dur(self.config.lease_grace);
        let guard = Guard { lease_expired_before: Some(cutoff), ..Guard::from(RunStatus::Running) };
        let lease_cleared = Change { lease_owner: Some(None), lease_expires_at: Some(None), ..Change::default() };
        let requeue_change = Change {
            status: Some(RunStatus::Queued),
            next_attempt: true,
            heartbeat_at: Some(None),
            queued_at: Some(now),
            repushed_at: Some(None),
            ..lease_cleared.clone()
        };
        let cancel_change = Change {
            status: Some(RunStatus::Completed),
            outcome: Some(RunOutcome::Cancelled),
            reason_code: Some(Some(ReasonCode::RunCancelledByOperator.as_str().into())),
            completed_at: Some(now),
            ..lease_cleared.clone()
        };
        let expire_change = failed_change(
            ReasonCode::RunLeaseExpired,
            "the worker stopped renewing its lease and no attempts remain",
            now,
            lease_cleared,
        );
        let apply_page = |page: Vec<StaleRun>| {
            let (guard, requeue_change, cancel_change, expire_change) =
                (&guard, &requeue_change, &cancel_change, &expire_change);
            async move {
                let (mut requeue, mut cancel, mut expire) = (vec![], vec![], vec![]);
                for run in &page {
                    let resumable = self.catalog.get(&run.operation).is_some_and(|s| s.resumable);
                    if run.cancel_requested_at.is_some() {
                        cancel.push(run);
                    } else if resumable && run.attempt < run.max_attempts {
                        requeue.push(run);
                    } else {
                        expire.push(run);
                    }
                }
                let mut out = PageResult::default();
                for (kind, runs, change, reason) in [
                    (ReconcileKind::Requeued, requeue, requeue_change, ReasonCode::RunLeaseExpired),
                    (ReconcileKind::CancelledStale, cancel, cancel_change, ReasonCode::RunCancelledByOperator),
                    (ReconcileKind::ExpiredLease, expire, expire_change, ReasonCode::RunLeaseExpired),
                ] {
                    out.append(self.apply_reconcile(kind, &runs, guard, change, reason, now, actor, dry_run).await?);
                }
                Ok::<_, ServiceError>(out)
            }
        };
        // Pages are read one after another (each starts after the last id of
        // the one before) while the writes of earlier pages run on other
        // connections: their runs are disjoint, so they cannot race each other.
        let mut writes = futures::stream::FuturesOrdered::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .find_stale(&crate::store::StaleQuery {
                    status: RunStatus::Running,
                    cutoff,
                    operation: filter.operation.clone(),
                    workspace_id: filter.workspace_id.clone(),
                    within: filter.within.clone(),
                    after,
                    limit: self.config.reconcile_page,
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let full = page.len() as u32 >= self.config.reconcile_page;
            writes.push_back(apply_page(page));
            while writes.len() >= RECONCILE_WRITES_IN_FLIGHT {
                if let Some(done) = futures::StreamExt::next(&mut writes).await {
                    report.absorb(done?);
                }
            }
            if !full {
                break;
            }
        }
        while let Some(done) = futures::StreamExt::next(&mut writes).await {
            report.absorb(done?);
        }
        Ok(())
    }

    async fn reconcile_queued(
        &self,
        now: DateTime<Utc>,
        actor: &Initiator,
        filter: &ReconcileFilter,
        dry_run: bool,
        report: &mut ReportSink<'_>,
    ) -> Result<(), ServiceError> {
        let default_stale = crate::catalog::defaults::queued_stale_after();
        let stale_after = |op: &str| chrono_dur(self.catalog.get(op).map_or(default_stale, |s| s.queued_stale_after));
        let shortest = self
            .catalog
            .operations
            .values()
            .map(|s| s.queued_stale_after)
            .chain([default_stale])
            .min()
            .unwrap_or(default_stale);
        let cutoff = now - chrono_dur(shortest);
        let mut after = None;
        loop {
            let page = self
                .store
                .find_stale(&crate::store::StaleQuery {
                    status: RunStatus::Queued,
                    cutoff,
                    operation: filter.operation.clone(),
                    workspace_id: filter.workspace_id.clone(),
                    within: filter.within.clone(),
                    after,
                    limit: self.config.reconcile_page,
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let full = page.len() as u32 >= self.config.reconcile_page;
            // Group by operation: each has its own threshold, and the guard
            // re-checks it inside the write.
            let mut by_op: std::collections::BTreeMap<&str, (Vec<&StaleRun>, Vec<&StaleRun>)> = Default::default();
            for run in &page {
                let t = stale_after(&run.operation);
                let age = now - run.queued_at;
                let entry = by_op.entry(run.operation.as_str()).or_default();
                if age >= t * 2 {
                    entry.1.push(run);
                } else if age >= t && run.repushed_at.is_none() {
                    entry.0.push(run);
                }
            }
            for (op, (repush, expire)) in by_op {
                let t = stale_after(op);
                let repush_guard =
                    Guard { queued_before: Some(now - t), not_repushed: true, ..Guard::from(RunStatus::Queued) };
                let repush_change = Change { repushed_at: Some(Some(now)), ..Change::default() };
                let done = self
                    .apply_reconcile(
                        ReconcileKind::Repush,
                        &repush,
                        &repush_guard,
                        &repush_change,
                        ReasonCode::RunNeverStarted,
                        now,
                        actor,
                        dry_run,
                    )
                    .await?;
                let expire_guard = Guard { queued_before: Some(now - t * 2), ..Guard::from(RunStatus::Queued) };
                let expire_change = failed_change(
                    ReasonCode::RunNeverStarted,
                    "no worker claimed the run, even after its job was pushed again",
                    now,
                    Change::default(),
                );
                report.absorb(done);
                let done = self
                    .apply_reconcile(
                        ReconcileKind::ExpiredNeverStarted,
                        &expire,
                        &expire_guard,
                        &expire_change,
                        ReasonCode::RunNeverStarted,
                        now,
                        actor,
                        dry_run,
                    )
                    .await?;
                report.absorb(done);
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_reconcile(
        &self,
        kind: ReconcileKind,
        runs: &[&StaleRun],
        guard: &Guard,
        change: &Change,
        reason: ReasonCode,
        now: DateTime<Utc>,
        actor: &Initiator,
        dry_run: bool,
    ) -> Result<PageResult, ServiceError> {
        let mut out = PageResult::default();
        if runs.is_empty() {
            return Ok(out);
        }
        let why = |run: &StaleRun| match kind {
            ReconcileKind::Requeued => format!(
                "lease expired at {}; attempt {} of {} will resume from its checkpoint",
                run.lease_expires_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                run.attempt + 1,
                run.max_attempts
            ),
            ReconcileKind::ExpiredLease => format!(
                "lease expired at {} after attempt {} of {} (or the operation is not resumable)",
                run.lease_expires_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                run.attempt,
                run.max_attempts
            ),
            ReconcileKind::CancelledStale => "lease expired on a run an operator asked to cancel".to_string(),
            ReconcileKind::Repush => {
                format!("queued since {} and never claimed: its job is pushed again", run.queued_at.to_rfc3339())
            }
            ReconcileKind::ExpiredNeverStarted => {
                format!("queued since {} and never claimed, even after a re-push", run.queued_at.to_rfc3339())
            }
        };
        let to_status = change.status.unwrap_or(guard.from);
        let mut push = |run: &StaleRun, attempt: i32| {
            out.actions.push(ReconcileAction {
                run_id: run.id,
                operation: run.operation.clone(),
                workspace_id: run.workspace_id.clone(),
                kind,
                from_status: guard.from,
                to_status,
                attempt,
                reason_code: reason.as_str().into(),
                why: why(run),
            })
        };
        if dry_run {
            for run in runs {
                push(run, run.attempt + i32::from(change.next_attempt));
            }
            return Ok(out);
        }
        let ids: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
        let action = match kind {
            ReconcileKind::Requeued => Transition::Requeue.action(),
            ReconcileKind::Repush => Transition::Repush.action(),
            ReconcileKind::CancelledStale => Transition::Cancel.action(),
            ReconcileKind::ExpiredLease | ReconcileKind::ExpiredNeverStarted => Transition::Expire.action(),
        };
        let audit =
            AuditEntry::new(now, actor.clone(), action).reason(reason.as_str()).details(json!({ "reconcile": kind }));
        let written = self.store.update_runs_brief(&ids, guard, change, now, &audit).await?;
        let before: std::collections::HashMap<Uuid, &StaleRun> = runs.iter().map(|r| (r.id, *r)).collect();
        let lost_races = runs.len() - written.len();
        for w in &written {
            if let Some(run) = before.get(&w.id) {
                push(run, w.attempt);
            }
        }
        out.lost_races = lost_races;
        Ok(out)
    }

    /// One run.
    pub async fn get(&self, id: Uuid) -> Result<OperationRun, ServiceError> {
        Ok(self.store.get_run(id).await?.ok_or(TransitionError::NotFound(id))?)
    }

    /// Runs, newest first.
    pub async fn list(&self, filter: &RunFilter) -> Result<Vec<OperationRun>, ServiceError> {
        Ok(self.store.list_runs(filter).await?)
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
}
