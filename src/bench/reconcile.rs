//! `--stale N`: the reconciler, timed.

use std::sync::Arc;
use std::time::Instant;

use oprun_scheduler::Dispatcher;
use oprun_shared::{Catalog, DispatchRequest, Initiator, JobQueue, OperationRunService, ServiceConfig};
use serde_json::json;

use super::{bench_request, print_report};
use crate::app::{App, CliError, CliResult};

/// `--stale N`: N runs left running by a worker that died an hour ago
/// (written through the service with a clock an hour back), then one timed
/// reconcile pass through the scheduler's reconciler step (requeue + re-push,
/// on a queue of its own) and a check that every run was requeued once.
pub(super) async fn bench_reconcile(
    app: &App,
    service: &OperationRunService,
    catalog: Arc<Catalog>,
    n: u64,
    json_out: bool,
) -> CliResult<()> {
    let rt = |e: String| CliError::Runtime(e);
    let past = Arc::new(oprun_shared::ManualClock::new(app.clock.now() - chrono::Duration::hours(1)));
    let dead = OperationRunService::new(app.db.runs.clone(), catalog.clone(), past.clone(), ServiceConfig::default());
    let setup = Instant::now();
    let mut ids = Vec::with_capacity(n as usize);
    let mut left = n;
    while left > 0 {
        let count = left.min(1000);
        left -= count;
        let reqs: Vec<DispatchRequest> = (0..count).map(|_| bench_request("bench.stale", "bench-stale")).collect();
        let mut batch = Vec::with_capacity(count as usize);
        for r in dead.dispatch_many(&reqs).await.map_err(|e| rt(e.to_string()))? {
            batch.push(r.map_err(|e| rt(e.to_string()))?.run.id);
        }
        dead.claim_batch(&batch, "bench-dead-worker").await.map_err(|e| rt(e.to_string()))?;
        ids.extend(batch);
    }
    let setup_secs = setup.elapsed().as_secs_f64();
    let queue: Arc<dyn JobQueue> = app.queue().await?;
    let authorizer = oprun_shared::Authorizer::new(app.db.access.clone(), catalog);
    let dispatcher = Dispatcher::new(service.clone(), authorizer, queue.clone());
    let filter = oprun_shared::ReconcileFilter { workspace_id: Some("bench-stale".into()), ..Default::default() };
    let started = Instant::now();
    let report = oprun_scheduler::reconciler::reconcile_and_push(
        &dispatcher,
        &Initiator::service("bench-reconciler"),
        &filter,
        false,
    )
    .await
    .map_err(|e| rt(e.to_string()))?;
    let secs = started.elapsed().as_secs_f64();
    let requeued = report.count(oprun_shared::ReconcileKind::Requeued) as u64;
    let depth = queue.depth().await.map_err(|e| rt(e.to_string()))?;
    let mut queued = 0u64;
    for chunk in ids.chunks(1000) {
        let runs = app.db.runs.get_runs(chunk).await.map_err(|e| rt(e.to_string()))?;
        queued += runs.iter().filter(|r| r.status == oprun_shared::RunStatus::Queued && r.attempt == 2).count() as u64;
    }
    let report_json = json!({
        "store": app.db.runs.backend(),
        "queue": "run store",
        "stale_runs": n,
        "setup_seconds": setup_secs,
        "reconcile_seconds": secs,
        "runs_reconciled_per_second": n as f64 / secs,
        "check": {"requeued": requeued, "queued_on_attempt_2": queued, "ready_to_claim": depth, "lost_races": report.lost_races},
    });
    let printed = print_report(&report_json, json_out);
    if requeued != n || queued != n || depth != Some(n) {
        return Err(rt(format!(
            "check failed: {requeued} requeued, {queued} queued on attempt 2, {depth:?} ready to claim (want {n} each)"
        )));
    }
    printed
}
