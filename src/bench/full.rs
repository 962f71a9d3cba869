//! The real path: `--dispatchers` tasks dispatch N runs in batches of
//! `--batch` (paced under `--rate`), a worker of `--concurrency` claims,
//! reauthorizes, runs a no-op and completes each; then the store is checked:
//! exactly N runs, each succeeded on its first attempt, executed once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oprun_scheduler::{DispatchOutcome, Dispatcher};
use oprun_shared::{Authorizer, Completion, DispatchRequest, JobQueue, OperationRunService, ReasonCode, SummaryCounts};
use oprun_worker::budget::{BudgetKey, Budgets, Limits, Take};
use oprun_worker::queue::{Queue, WorkerOptions, run_worker};
use oprun_worker::{Operation, OperationError, Operations, RunContext, Runner};
use serde_json::json;
use tokio::sync::watch;

use super::{BenchArgs, Checked, bench_request, check_runs, peak_rss_mib, percentile, print_report};
use crate::app::{App, CliError, CliResult};

/// Succeeds at once, or (`fail_first`) fails each run's first attempt with
/// a transient provider failure its retry policy retries.
#[derive(Debug, Default)]
struct Noop {
    calls: AtomicU64,
    fail_first: bool,
    /// `--budget`: each run takes a permit (and gives it back) of a
    /// provider budget for its environment, as a provider request does.
    budget: Option<(Budgets, Limits)>,
}

#[async_trait]
impl Operation for Noop {
    async fn execute(&self, ctx: &RunContext) -> Result<Completion, OperationError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some((budgets, limits)) = &self.budget {
            let key = BudgetKey::new("bench", ctx.run().environment_id.as_deref());
            match budgets.take(&key, limits).await {
                Take::Granted(permit) => drop(permit),
                other => {
                    return Err(OperationError::Failed {
                        reason: ReasonCode::ProviderBudgetFull,
                        message: format!("bench: the budget said {other:?} (its limit is the concurrency)"),
                    });
                }
            }
        }
        if self.fail_first && ctx.run().attempt == 1 {
            return Err(OperationError::Failed {
                reason: ReasonCode::ProviderUnavailable,
                message: "bench: the first attempt fails".into(),
            });
        }
        Ok(Completion::succeeded(SummaryCounts::new()))
    }
}

#[derive(Debug, Clone)]
struct SharedNoop(Arc<Noop>);

#[async_trait]
impl Operation for SharedNoop {
    async fn execute(&self, ctx: &RunContext) -> Result<Completion, OperationError> {
        self.0.execute(ctx).await
    }
}

/// Releases run `i` at `started + i / rate`.
#[derive(Debug, Clone)]
struct Pace {
    started: Instant,
    rate: u64,
}

impl Pace {
    async fn wait(&self, i: u64) {
        let at = self.started + Duration::from_secs_f64(i as f64 / self.rate as f64);
        tokio::time::sleep_until(at.into()).await;
    }
}

/// The real path, measured (see the module doc).
pub(super) async fn bench_full(
    app: &App,
    service: &OperationRunService,
    authorizer: Authorizer,
    queue: Arc<Queue>,
    args: &BenchArgs,
) -> CliResult<()> {
    let dispatcher = Dispatcher::new(service.clone(), authorizer.clone(), queue.clone() as Arc<dyn JobQueue>);
    let budget = if args.budget {
        let budgets = Budgets::from_config(&app.config.budgets).map_err(CliError::Usage)?;
        // Room for every slot, twice over: a shared permit is given back
        // in the background, after its run has ended.
        let concurrency = u32::try_from(args.concurrency.saturating_mul(2)).unwrap_or(u32::MAX);
        Some((budgets, Limits { concurrency: Some(concurrency), per_second: None, lease: Duration::from_secs(60) }))
    } else {
        None
    };
    let budget_kind = budget.as_ref().map(|(b, _)| if b.is_shared() { "redis" } else { "in_process" });
    let noop = Arc::new(Noop { fail_first: args.retry_once, budget, ..Noop::default() });
    let (operation, attempts) = if args.retry_once { ("bench.retry", 2) } else { ("bench.noop", 1) };
    let mut ops = Operations::new();
    ops.register("bench.noop", SharedNoop(noop.clone()));
    let runner = Runner::new(service.clone(), authorizer, ops, crate::app::process_name("bench"));
    let stats = runner.stats().clone();
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let opts = WorkerOptions {
        name_prefix: "bench".into(),
        concurrency: args.concurrency,
        shutdown_grace: Duration::from_secs(10),
    };
    let (q, qcfg) = ((*queue).clone(), app.config.queue.clone());
    let worker = tokio::spawn(async move {
        run_worker(q, qcfg, opts, Arc::new(runner), async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await
    });
    let n = args.runs;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    // Paced: small batches (about every 5 ms) released on schedule.
    let batch = match args.rate {
        Some(rate) => args.batch.min((rate / 200).max(1)),
        None => args.batch,
    };
    let pace = args.rate.map(|rate| Pace { started, rate });
    let mut dispatchers = tokio::task::JoinSet::new();
    for _ in 0..args.dispatchers {
        let (d, next, pace) = (dispatcher.clone(), next.clone(), pace.clone());
        dispatchers.spawn(async move {
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= n {
                    break;
                }
                let count = batch.min(n - from);
                if let Some(pace) = &pace {
                    pace.wait(from).await;
                }
                let reqs: Vec<DispatchRequest> = (0..count).map(|_| bench_request(operation, "bench")).collect();
                for r in d.dispatch_many(reqs).await.map_err(|e| e.to_string())? {
                    match r {
                        Ok(DispatchOutcome::Dispatched { .. }) => {}
                        Ok(other) => return Err(format!("dispatch refused: {other:?}")),
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
            Ok(())
        });
    }
    while let Some(r) = dispatchers.join_next().await {
        r.map_err(|e| CliError::Runtime(e.to_string()))?.map_err(CliError::Runtime)?;
    }
    let dispatched_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while stats.snapshot().finished < n {
        if Instant::now() > deadline {
            return Err(CliError::Runtime(format!(
                "only {} of {n} runs finished in 10 minutes",
                stats.snapshot().finished
            )));
        }
        // A worker that died ends the bench at once, with its error.
        if worker.is_finished() {
            let why = match worker.await {
                Ok(Ok(())) => "it stopped".to_string(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) => e.to_string(),
            };
            return Err(CliError::Runtime(format!("the worker died after {} runs: {why}", stats.snapshot().finished)));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    let _ = worker.await;
    // Check the truth: exactly N runs, all succeeded, each executed once.
    let Checked { seen, succeeded, queue_lat, e2e } = check_runs(service, attempts).await?;
    let executions = noop.calls.load(Ordering::Relaxed);
    let retries = stats.snapshot().retries_scheduled;
    let rate = n as f64 / elapsed.as_secs_f64();
    let mut report = json!({
        "store": app.db.runs.backend(),
        "queue": "run store",
        "runs": n,
        "concurrency": args.concurrency,
        "dispatchers": args.dispatchers,
        "dispatch_batch": batch,
        "dispatch_rate": args.rate,
        "seconds": elapsed.as_secs_f64(),
        "dispatch_seconds": dispatched_in.as_secs_f64(),
        "runs_per_second": rate,
        // Under --retry-once no run's row holds its first wait any more.
        "queue_latency_ms": if queue_lat.is_empty() { serde_json::Value::Null } else {
            json!({"p50": percentile(&queue_lat, 0.5), "p95": percentile(&queue_lat, 0.95), "p99": percentile(&queue_lat, 0.99)})
        },
        "end_to_end_ms": {"p50": percentile(&e2e, 0.5), "p95": percentile(&e2e, 0.95), "p99": percentile(&e2e, 0.99)},
        "peak_rss_mib": peak_rss_mib(),
        "retry_once": args.retry_once,
        "budget": budget_kind,
        "check": {"runs_in_store": seen, "succeeded_on_attempt": attempts, "succeeded": succeeded, "operation_executions": executions, "retries_scheduled": retries},
    });
    let want_retries = if args.retry_once { n } else { 0 };
    let ok = seen == n && succeeded == n && executions == n * attempts as u64 && retries == want_retries;
    if args.baseline {
        let claim = args.concurrency.clamp(1, oprun_worker::queue::MAX_CLAIM);
        let base = super::baseline::baseline(app, n, args.dispatchers, args.batch, claim).await?;
        report["baseline_jobs_per_second"] = json!(base);
        report["full_over_baseline"] = json!(rate / base);
    }
    // A failed check outranks a reader that went away.
    let printed = print_report(&report, args.json);
    if !ok {
        return Err(CliError::Runtime(format!(
            "check failed: {seen} runs in the store (want {n}), {succeeded} succeeded on attempt {attempts} (want {n}), \
             {executions} executions (want {}), {retries} retries scheduled (want {want_retries})",
            n * attempts as u64
        )));
    }
    printed
}
