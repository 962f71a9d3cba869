//! An operator's retry of a run that ended blocked or failed: a new queued
//! run that links back to it, and an audit row on the old one.

use serde_json::{Value, json};
use tracing::instrument;
use uuid::Uuid;

use super::{DispatchRequest, Dispatched, OperationRunService, ServiceError};
use crate::audit::AuditEntry;
use crate::catalog::OperationSpec;
use crate::lifecycle::{RunOutcome, RunStatus, SourceSurface, Transition, TransitionError};
use crate::run::{Initiator, OperationRun};
use crate::store::{Guard, RunWrite};

/// Why `old` may not be retried under `spec`, if it may not.
fn not_retryable(old: &OperationRun, spec: &OperationSpec) -> Option<String> {
    if old.status != RunStatus::Completed {
        return Some(format!("it is still {}", old.status));
    }
    let retryable_outcome = match old.outcome {
        RunOutcome::Blocked | RunOutcome::Failed => true,
        RunOutcome::PartiallySucceeded => spec.retry_partial,
        _ => false,
    };
    if !retryable_outcome {
        return Some(format!("its outcome is {}", old.outcome));
    }
    if !spec.retryable_by_operators {
        return Some(format!("operation '{}' is not retryable by operators", old.operation));
    }
    None
}

impl OperationRunService {
    /// Retry a completed blocked or failed run: a new queued run that links
    /// back to it. A run waiting for its next attempt (or snoozed) is made
    /// ready now instead ("retry now"). Authorization of `actor` is the
    /// caller's.
    #[instrument(skip_all, fields(run.id = %id), err)]
    pub async fn retry(&self, id: Uuid, actor: &Initiator) -> Result<Dispatched, ServiceError> {
        let old = self.store.get_run(id).await?.ok_or(TransitionError::NotFound(id))?;
        if old.status == RunStatus::Queued && old.available_at > self.clock.now() {
            return self.retry_now(&old, actor).await;
        }
        let spec = self.spec(&old.operation)?;
        if let Some(why) = not_retryable(&old, spec) {
            return Err(ServiceError::NotRetryable { id, why });
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
            available_at: None,
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
        let mut on_old = AuditEntry::new(now, actor.clone(), Transition::Retried.action())
            .details(json!({ "retry_run_id": run.id }));
        on_old.run_id = Some(old.id);
        on_old.workspace_id = Some(old.workspace_id.clone());
        on_old.environment_id = old.environment_id.clone();
        on_old.to_status = Some(old.status);
        on_old.outcome = Some(old.outcome);
        let retried = self.insert(run, &[on_new, on_old]).await?;
        // A retried refusal is closed: a refusal after it is a new run.
        if let Some(key) = &old.refusal_key {
            self.store.close_refusals(key, now).await?;
        }
        Ok(retried)
    }

    /// A waiting queued run made ready now, audited `run.retry_now`.
    async fn retry_now(&self, run: &OperationRun, actor: &Initiator) -> Result<Dispatched, ServiceError> {
        let now = self.clock.now();
        let audit = AuditEntry::new(now, actor.clone(), Transition::RetryNow.action())
            .details(json!({ "was_available_at": run.available_at, "attempt": run.attempt }));
        let guard = Guard::from(RunStatus::Queued);
        let run = self.write_one(run.id, Transition::RetryNow, guard, RunWrite::ready_now(now), audit).await?;
        Ok(Dispatched { run, deduplicated: false })
    }
}
