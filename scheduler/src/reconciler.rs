//! The stale-run reconciler as a loop step: reconcile through the service,
//! then push the jobs of runs it requeued or marked for re-push.

use oprun_shared::{Initiator, ReconcileFilter, ReconcileReport, ServiceError};
use tracing::{info, warn};

use crate::dispatch::Dispatcher;

/// Reconcile once as `actor`; unless `dry_run`, push the jobs the report
/// asks for. A failed push is logged: the next pass expires the run.
pub async fn reconcile_and_push(
    dispatcher: &Dispatcher,
    actor: &Initiator,
    filter: &ReconcileFilter,
    dry_run: bool,
) -> Result<ReconcileReport, ServiceError> {
    let report = dispatcher.service().reconcile(actor, filter, dry_run).await?;
    if !dry_run {
        for a in &report.actions {
            let kind =
                serde_json::to_value(a.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            metrics::counter!("oprun_reconcile_actions_total", "kind" => kind).increment(1);
        }
        let ids = report.to_push();
        if !ids.is_empty() {
            match dispatcher.queue().push_many(&ids).await {
                Ok(()) => info!(pushed = ids.len(), "reconciler pushed jobs again"),
                Err(e) => warn!(error = %e, runs = ids.len(), "reconciler could not push jobs"),
            }
        }
        if !report.actions.is_empty() {
            info!(actions = report.actions.len(), lost_races = report.lost_races, "reconciled stale runs");
        }
    }
    Ok(report)
}
