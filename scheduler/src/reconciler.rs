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
    if dry_run {
        return dispatcher.service().reconcile(actor, filter, true).await;
    }
    // Jobs are pushed page by page while later pages are reconciled.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<uuid::Uuid>>();
    let queue = dispatcher.queue().clone();
    let pusher = async move {
        let (mut pushed, mut failed) = (0usize, 0usize);
        while let Some(mut ids) = rx.recv().await {
            while let Ok(mut more) = rx.try_recv() {
                ids.append(&mut more);
            }
            match queue.push_many(&ids).await {
                Ok(()) => pushed += ids.len(),
                Err(e) => {
                    failed += ids.len();
                    warn!(error = %e, runs = ids.len(), "reconciler could not push jobs");
                }
            }
        }
        (pushed, failed)
    };
    let reconcile = async move {
        let report = dispatcher.service().reconcile_streaming(actor, filter, false, Some(&tx)).await;
        drop(tx);
        report
    };
    let (report, (pushed, failed)) = tokio::join!(reconcile, pusher);
    let report = report?;
    for a in &report.actions {
        let kind = serde_json::to_value(a.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        metrics::counter!("oprun_reconcile_actions_total", "kind" => kind).increment(1);
    }
    if pushed > 0 {
        info!(pushed, "reconciler pushed jobs again");
    }
    if !report.actions.is_empty() {
        info!(
            actions = report.actions.len(),
            lost_races = report.lost_races,
            failed_pushes = failed,
            "reconciled stale runs"
        );
    }
    Ok(report)
}
