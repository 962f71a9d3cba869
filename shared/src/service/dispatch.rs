//! Dispatch: a request validated, its dedup key made, and the run written
//! queued (or the active run holding its key returned); and the refused
//! dispatch that writes a blocked run on-call can see.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::instrument;
use uuid::Uuid;

use super::{OperationRunService, ServiceError};
use crate::audit::AuditEntry;
use crate::catalog::{DedupPolicy, OperationSpec, ScopeKind};
use crate::counts::SummaryCounts;
use crate::lifecycle::{RunOutcome, RunStatus, SourceSurface, Transition};
use crate::reason::ReasonCode;
use crate::redact;
use crate::run::MAX_ID_LEN;
use crate::run::{FailureEntry, Initiator, OperationRun, Scope};
use crate::store::Inserted;

/// Largest captured context or params document, serialized.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

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
    /// When the run may start (`None`: now; a time in the past means now).
    pub available_at: Option<DateTime<Utc>>,
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

impl From<Inserted> for Dispatched {
    fn from(inserted: Inserted) -> Self {
        match inserted {
            Inserted::New(run) => Dispatched { run, deduplicated: false },
            Inserted::Existing(run) => Dispatched { run, deduplicated: true },
        }
    }
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

/// The key of a scheduled dispatch's open refusal: its schedule and scope
/// (`None` for a dispatch no schedule made).
fn refusal_key(req: &DispatchRequest) -> Option<String> {
    if req.source != SourceSurface::Scheduler {
        return None;
    }
    let schedule = req.context.get("schedule").and_then(Value::as_str)?;
    Some(format!(
        "{}|{}|{}|{}|{}",
        key_part(Some(schedule)),
        key_part(Some(&req.scope.workspace_id)),
        key_part(req.scope.environment_id.as_deref()),
        key_part(req.scope.target_type.as_deref()),
        key_part(req.scope.target_id.as_deref()),
    ))
}

/// The audit row of a dispatch.
fn dispatch_audit(req: &DispatchRequest, now: DateTime<Utc>) -> AuditEntry {
    AuditEntry::new(now, req.initiator.clone(), Transition::Dispatch.action())
        .details(json!({ "source_surface": req.source.as_str() }))
}

impl OperationRunService {
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

    /// The queued run a valid request makes.
    pub(super) fn new_run(
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
            snoozes: 0,
            refusals: 0,
            last_refused_at: None,
            refusal_key: None,
            retry_of: None,
            lease_owner: None,
            lease_expires_at: None,
            heartbeat_at: None,
            cancel_requested_at: None,
            queued_at: now,
            repushed_at: None,
            available_at: req.available_at.unwrap_or(now).max(now),
            created_at: now,
            started_at: None,
            completed_at: None,
            updated_at: now,
        })
    }

    /// The queued run and the audit row a valid request makes, written by
    /// no one yet: for a dispatch inside the caller's own transaction
    /// ([`SqlStore::dispatch_in`](crate::store::SqlStore::dispatch_in)).
    pub fn prepare_dispatch(&self, req: &DispatchRequest) -> Result<(OperationRun, AuditEntry), ServiceError> {
        let spec = self.validate(req)?;
        let now = self.clock.now();
        Ok((self.new_run(req, spec, now)?, dispatch_audit(req, now)))
    }

    /// Dispatch: write the run queued, or return the active run that holds
    /// its dedup key. Authorization is the caller's (see `Authorizer`).
    #[instrument(skip_all, fields(operation = %req.operation, workspace = %req.scope.workspace_id), err)]
    pub async fn dispatch(&self, req: DispatchRequest) -> Result<Dispatched, ServiceError> {
        let spec = self.validate(&req)?;
        let now = self.clock.now();
        let run = self.new_run(&req, spec, now)?;
        self.insert(run, &[dispatch_audit(&req, now)]).await
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
                    rows.push((run, dispatch_audit(req, now)));
                    slots.push(i);
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let inserted = self.store.insert_runs(&rows).await?;
        for (slot, ins) in slots.into_iter().zip(inserted) {
            out[slot] = Some(Ok(ins.into()));
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ServiceError::InvalidInput("not dispatched".into()))))
            .collect())
    }

    /// Write a new run with its audit rows (or find the active run holding
    /// its dedup key).
    pub(super) async fn insert(&self, run: OperationRun, audit: &[AuditEntry]) -> Result<Dispatched, ServiceError> {
        Ok(self.store.insert_run(&run, audit).await?.into())
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
        // A schedule refused tick after tick keeps one blocked run per scope
        // and reason that counts the refusals (the tick ledger has each).
        if let Some(key) = refusal_key(&req) {
            run.refusals = 1;
            run.last_refused_at = Some(now);
            run.refusal_key = Some(key);
            let (run, _new) = self.store.record_refusal(&run, &audit).await?;
            return Ok(run);
        }
        Ok(self.insert(run, &[audit]).await?.run)
    }

    /// A scheduled dispatch was made in its scope: the refusals open there
    /// for its schedule are over (the next refusal is a new run).
    pub async fn close_refusals(&self, req: &DispatchRequest) -> Result<u64, ServiceError> {
        match refusal_key(req) {
            Some(key) => Ok(self.store.close_refusals(&key, self.clock.now()).await?),
            None => Ok(0),
        }
    }
}
