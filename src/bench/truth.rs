//! `--truth-only`: the run truth's own ceiling.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use oprun_shared::{Claim, Completion, DispatchRequest, Finish, Lease, OperationRunService, SummaryCounts};
use serde_json::json;

use super::{BenchArgs, Checked, bench_request, check_runs, peak_rss_mib, print_report};
use crate::app::{App, CliError, CliResult};

/// `--truth-only`: the same N runs through the run truth alone, with no
/// queue and no worker. Each of `--dispatchers` tasks takes `--batch` runs
/// at a time: authorizes the dispatch (one decision for the batch, as the
/// dispatcher shares it), dispatches them in one transaction, claims them in
/// one write, reauthorizes (one decision, as the claim batcher shares it)
/// and finishes them succeeded in one write. Batches this big are the most
/// the worker's batchers ever take, so this rate is the ceiling the truth's
/// own writes set on `bench` on this store and machine.
pub(super) async fn bench_truth_only(
    app: &App,
    service: &OperationRunService,
    authorizer: &oprun_shared::Authorizer,
    args: &BenchArgs,
) -> CliResult<()> {
    let n = args.runs;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.dispatchers {
        let (service, authorizer, next, batch) = (service.clone(), authorizer.clone(), next.clone(), args.batch);
        tasks.spawn(async move {
            let fail = |what: &str, e: String| format!("{what}: {e}");
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= n {
                    return Ok::<(), String>(());
                }
                let reqs: Vec<DispatchRequest> =
                    (0..batch.min(n - from)).map(|_| bench_request("bench.noop", "bench")).collect();
                let first = &reqs[0];
                let allowed = authorizer
                    .authorize_dispatch(&first.initiator.id, &first.operation, &first.scope)
                    .await
                    .map_err(|e| fail("authorize dispatch", e.to_string()))?;
                if !allowed.is_allowed() {
                    return Err(format!("dispatch refused: {allowed}"));
                }
                let mut ids = Vec::with_capacity(reqs.len());
                for r in service.dispatch_many(&reqs).await.map_err(|e| fail("dispatch", e.to_string()))? {
                    ids.push(r.map_err(|e| fail("dispatch", e.to_string()))?.run.id);
                }
                let claims =
                    service.claim_batch(&ids, "bench-truth").await.map_err(|e| fail("claim", e.to_string()))?;
                if let Some(other) = claims.iter().find(|c| !matches!(c, Claim::Claimed(_))) {
                    return Err(format!("claim refused: {other:?}"));
                }
                // Every run of the batch shares actor, operation and scope: one decision.
                let Some(Claim::Claimed(run)) = claims.first() else {
                    return Err("claim returned nothing".into());
                };
                let decision = authorizer.reauthorize(run).await.map_err(|e| fail("reauthorize", e.to_string()))?;
                if !decision.is_allowed() {
                    return Err(format!("reauthorization refused: {decision}"));
                }
                let done = Finish::Complete(Completion::succeeded(SummaryCounts::new()));
                let items: Vec<(Lease, Finish)> = (claims.iter())
                    .filter_map(|c| match c {
                        Claim::Claimed(run) => Lease::of(run).map(|lease| (lease, done.clone())),
                        _ => None,
                    })
                    .collect();
                for r in service.finish_batch(&items).await.map_err(|e| fail("finish", e.to_string()))? {
                    r.map_err(|e| fail("finish", e.to_string()))?;
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| CliError::Runtime(e.to_string()))?.map_err(CliError::Runtime)?;
    }
    let elapsed = started.elapsed();
    let Checked { seen, succeeded, .. } = check_runs(service, 1).await?;
    let report = json!({
        "mode": "truth_only",
        "store": app.db.runs.backend(),
        "runs": n,
        "dispatchers": args.dispatchers,
        "batch": args.batch,
        "seconds": elapsed.as_secs_f64(),
        "runs_per_second": n as f64 / elapsed.as_secs_f64(),
        "peak_rss_mib": peak_rss_mib(),
        "check": {"runs_in_store": seen, "succeeded_first_attempt": succeeded},
    });
    let printed = print_report(&report, args.json);
    if seen != n || succeeded != n {
        return Err(CliError::Runtime(format!(
            "check failed: {seen} runs in the store, {succeeded} succeeded on the first attempt (want {n} each)"
        )));
    }
    printed
}
