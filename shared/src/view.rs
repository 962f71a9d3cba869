//! How a run is shown to people and scripts (CLI `--json`, the HTTP API):
//! the record's public fields, and its guidance derived on read.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::access::{Authorizer, Decision};
use crate::guidance::{GuidanceContext, ResolutionCase, guidance};
use crate::lifecycle::{RunOutcome, RunStatus, SourceSurface};
use crate::run::{FailureEntry, Initiator, OperationRun};
use crate::service::{OperationRunService, ServiceError};
use crate::store::RunFilter;
use crate::viewer::{ACCESS_MANAGE, Viewer};

/// The longest retry chain followed for guidance.
pub const MAX_RETRY_CHAIN: usize = 20;

/// The capability that shows a run's checkpoint: `access.manage`, the
/// workspace admin's. A checkpoint is the handler's own resume state and can
/// hold what a provider sent (a paging link, stored without its secrets but
/// still the provider's locator); no operator action needs it (retry, cancel
/// and guidance work from the record), so only those trusted with the
/// workspace's access see it. Everyone else sees whether there is one.
pub const CHECKPOINT_CAPABILITY: &str = ACCESS_MANAGE;

/// A run as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunView {
    /// Id.
    pub id: Uuid,
    /// Operation.
    pub operation: String,
    /// Status.
    pub status: RunStatus,
    /// Outcome.
    pub outcome: RunOutcome,
    /// Reason code, as stored.
    pub reason_code: Option<String>,
    /// Workspace.
    pub workspace_id: String,
    /// Environment.
    pub environment_id: Option<String>,
    /// Target kind.
    pub target_type: Option<String>,
    /// Target id.
    pub target_id: Option<String>,
    /// Who started it.
    pub initiator: Initiator,
    /// From where.
    pub source_surface: SourceSurface,
    /// Attempt.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The run it retries.
    pub retry_of: Option<Uuid>,
    /// Counts.
    pub summary_counts: serde_json::Value,
    /// Failures (sanitized).
    pub failure_summary: Vec<FailureEntry>,
    /// Whether an operator asked it to stop.
    pub cancel_requested: bool,
    /// How many refused scheduled dispatches this blocked run stands for
    /// (a schedule refused tick after tick keeps one run; 0: not refused).
    pub refusals: i32,
    /// The newest of those refusals.
    pub last_refused_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Completed.
    pub completed_at: Option<DateTime<Utc>>,
}

impl From<&OperationRun> for RunView {
    fn from(r: &OperationRun) -> Self {
        Self {
            id: r.id,
            operation: r.operation.clone(),
            status: r.status,
            outcome: r.outcome,
            reason_code: r.reason_code.clone(),
            workspace_id: r.workspace_id.clone(),
            environment_id: r.environment_id.clone(),
            target_type: r.target_type.clone(),
            target_id: r.target_id.clone(),
            initiator: r.initiator.clone(),
            source_surface: r.source_surface,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            retry_of: r.retry_of,
            summary_counts: r.summary_counts.to_json(),
            failure_summary: r.failure_summary.clone(),
            cancel_requested: r.cancel_requested_at.is_some(),
            refusals: r.refusals,
            last_refused_at: r.last_refused_at,
            created_at: r.created_at,
            started_at: r.started_at,
            completed_at: r.completed_at,
        }
    }
}

/// A run as shown on its own: the listed fields, the captured context and
/// params, and its guidance for the viewer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunDetail {
    /// The listed fields.
    #[serde(flatten)]
    pub run: RunView,
    /// The dispatch context captured.
    pub context: serde_json::Value,
    /// The parameters.
    pub params: serde_json::Value,
    /// Whether the run has a checkpoint (a resumed attempt continues there).
    pub has_checkpoint: bool,
    /// The checkpoint, for a viewer holding [`CHECKPOINT_CAPABILITY`] in the
    /// run's workspace; `null` for others.
    pub checkpoint: Option<serde_json::Value>,
    /// Lease holder while running.
    pub lease_owner: Option<String>,
    /// Lease expiry while running.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// What to do about it, for this viewer.
    pub guidance: ResolutionCase,
}

/// Build a run's detail and guidance for `viewer`. Retry links are followed
/// only inside workspaces the viewer may see (`visible`), so that nothing
/// outside the viewer's scope is referenced.
pub async fn run_detail(
    service: &OperationRunService,
    authorizer: &Authorizer,
    run: &OperationRun,
    viewer: &Viewer,
    visible: &(dyn Fn(&str) -> bool + Sync),
) -> Result<RunDetail, ServiceError> {
    let spec = service.catalog().get(&run.operation);
    let mut chain = vec![];
    let mut cursor = run.retry_of;
    while let Some(id) = cursor {
        if chain.len() >= MAX_RETRY_CHAIN {
            break;
        }
        match service.store().get_run(id).await? {
            Some(prev) if visible(&prev.workspace_id) => {
                chain.push(prev.id);
                cursor = prev.retry_of;
            }
            _ => break,
        }
    }
    chain.reverse();
    let newer = service.list(&RunFilter { retry_of: Some(run.id), limit: 1, ..RunFilter::default() }).await?;
    // A refusal whose cause someone fixed since: the same check passes now.
    let refused =
        run.outcome == RunOutcome::Blocked && run.reason_code.as_deref().is_some_and(|c| c.starts_with("execution."));
    let cause_cleared = refused && matches!(authorizer.reauthorize(run).await?, Decision::Allowed);
    let ctx = GuidanceContext {
        cause_cleared,
        operation_capability: spec.map(|s| s.capability.clone()),
        retryable_by_operators: spec.is_some_and(|s| s.retryable_by_operators),
        retry_chain: chain,
        retried_by: newer.first().filter(|r| visible(&r.workspace_id)).map(|r| r.id),
        now: service.clock().now(),
        queued_stale_after: spec.map_or_else(crate::catalog::defaults::queued_stale_after, |s| s.queued_stale_after),
    };
    Ok(RunDetail {
        run: RunView::from(run),
        context: run.context.clone(),
        params: run.params.clone(),
        has_checkpoint: run.checkpoint.is_some(),
        checkpoint: run.checkpoint.clone().filter(|_| viewer.can(CHECKPOINT_CAPABILITY)),
        lease_owner: run.lease_owner.clone(),
        lease_expires_at: run.lease_expires_at,
        guidance: guidance(run, viewer, &ctx),
    })
}
