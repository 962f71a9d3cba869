//! `oprun bench`: the product's real path, measured. N runs are dispatched
//! through `OperationRunService` (authorized, written, audited, pushed),
//! workers claim, reauthorize, run a no-op operation and complete every run
//! through the service, on the configured store and queue. `--baseline`
//! pushes the same N no-op jobs through bare apalis on the same queue.
//!
//! The bench needs a scratch store: it loads its own access truth (workspace
//! `bench`), and refuses a store whose access tables hold anything else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oprun_scheduler::{DispatchOutcome, Dispatcher};
use oprun_shared::{
    AccessFile, Catalog, Claim, Completion, DispatchRequest, Finish, Initiator, JobQueue, Lease, OperationRunService,
    RunFilter, RunOutcome, Scope, ServiceConfig, SourceSurface, SummaryCounts,
};
use oprun_worker::queue::{JobHandler, Queue, WorkerOptions, run_worker};
use oprun_worker::{Operation, OperationError, Operations, RunContext, Runner};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::app::{App, CliError, CliResult};

const BENCH_CATALOG: &str = r#"
capabilities = ["bench.run"]
[operations."bench.noop"]
kind = "bench.noop"
capability = "bench.run"
scope = "workspace"
dedup = "none"
lease = "60s"
heartbeat = "20s"
max_attempts = 1
[operations."bench.stale"]
kind = "bench.noop"
capability = "bench.run"
scope = "workspace"
dedup = "none"
lease = "60s"
heartbeat = "20s"
max_attempts = 3
resumable = true
"#;

const BENCH_ACCESS: &str = r#"
[roles]
bench = ["bench.run", "runs.view"]
[[actors]]
id = "bench-actor"
kind = "service"
[[workspaces]]
id = "bench"
[[workspaces]]
id = "bench-stale"
[[memberships]]
actor = "bench-actor"
workspace = "bench"
role = "bench"
[[memberships]]
actor = "bench-actor"
workspace = "bench-stale"
role = "bench"
"#;

#[derive(Debug, Default)]
struct Noop {
    calls: AtomicU64,
}

#[async_trait]
impl Operation for Noop {
    async fn execute(&self, _ctx: &RunContext) -> Result<Completion, OperationError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Bench settings.
pub struct BenchArgs {
    pub runs: u64,
    pub concurrency: usize,
    pub dispatchers: usize,
    pub batch: u64,
    pub rate: Option<u64>,
    pub stale: Option<u64>,
    pub baseline: bool,
    pub truth_only: bool,
    pub json: bool,
}

pub async fn bench(path: Option<&std::path::Path>, args: BenchArgs) -> CliResult<()> {
    if args.runs == 0
        || args.concurrency == 0
        || args.dispatchers == 0
        || args.batch == 0
        || args.rate == Some(0)
        || args.stale == Some(0)
    {
        return Err(CliError::Usage(
            "--runs, --concurrency, --dispatchers, --batch, --rate and --stale must be at least 1".into(),
        ));
    }
    if args.truth_only && (args.baseline || args.rate.is_some() || args.stale.is_some()) {
        return Err(CliError::Usage("--truth-only cannot be combined with --baseline, --rate or --stale".into()));
    }
    let app = App::open(path).await?;
    // A scratch store only: the bench replaces the access tables.
    let existing = app.db.access.active_workspaces().await.map_err(|e| CliError::Runtime(e.to_string()))?;
    if existing.iter().any(|w| w != "bench" && w != "bench-stale") {
        return Err(CliError::Usage(format!(
            "bench needs a scratch store (it replaces the access tables); this one has workspaces {existing:?}. \
             Point OPRUN_DATABASE_URL (and OPRUN_QUEUE_URL) at an empty database"
        )));
    }
    let catalog = Arc::new(Catalog::from_toml(BENCH_CATALOG).map_err(|e| CliError::Runtime(e.to_string()))?);
    let access =
        AccessFile::from_toml(BENCH_ACCESS, "bench access", None).map_err(|e| CliError::Runtime(e.to_string()))?;
    app.db.access.apply_access(&access).await.map_err(|e| CliError::Runtime(e.to_string()))?;
    let service =
        OperationRunService::new(app.db.runs.clone(), catalog.clone(), app.clock.clone(), ServiceConfig::default());
    let authorizer = oprun_shared::Authorizer::new(app.db.access.clone(), catalog.clone());
    if args.truth_only {
        return bench_truth_only(&app, &service, &authorizer, &args).await;
    }
    let queue = app.queue().await?;
    if let Some(stale) = args.stale {
        return bench_reconcile(&app, &service, catalog, stale, args.json).await;
    }
    let dispatcher = Dispatcher::new(service.clone(), authorizer.clone(), queue.clone() as Arc<dyn JobQueue>);
    let noop = Arc::new(Noop::default());
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
                let reqs: Vec<DispatchRequest> = (0..count).map(|_| bench_request("bench.noop", "bench")).collect();
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
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    let _ = worker.await;
    // Check the truth: exactly N runs, all succeeded, each executed once.
    let Checked { seen, succeeded, queue_lat, e2e } = check_runs(&service).await?;
    let executions = noop.calls.load(Ordering::Relaxed);
    let rate = n as f64 / elapsed.as_secs_f64();
    let mut report = json!({
        "store": app.db.runs.backend(),
        "queue": format!("{:?}", app.config.queue.backend).to_lowercase(),
        "runs": n,
        "concurrency": args.concurrency,
        "dispatchers": args.dispatchers,
        "dispatch_batch": batch,
        "dispatch_rate": args.rate,
        "seconds": elapsed.as_secs_f64(),
        "dispatch_seconds": dispatched_in.as_secs_f64(),
        "runs_per_second": rate,
        "queue_latency_ms": {"p50": percentile(&queue_lat, 0.5), "p95": percentile(&queue_lat, 0.95), "p99": percentile(&queue_lat, 0.99)},
        "end_to_end_ms": {"p50": percentile(&e2e, 0.5), "p95": percentile(&e2e, 0.95), "p99": percentile(&e2e, 0.99)},
        "peak_rss_mib": peak_rss_mib(),
        "check": {"runs_in_store": seen, "succeeded_first_attempt": succeeded, "operation_executions": executions},
    });
    let ok = seen == n && succeeded == n && executions == n;
    if args.baseline {
        let base = baseline(&app, n, args.concurrency).await?;
        report["baseline_jobs_per_second"] = json!(base);
        report["truth_cost_ratio"] = json!(base / rate);
    }
    // A failed check outranks a reader that went away.
    let printed = print_report(&report, args.json);
    if !ok {
        return Err(CliError::Runtime(format!(
            "check failed: {seen} runs in the store, {succeeded} succeeded on the first attempt, {executions} executions (want {n} each)"
        )));
    }
    printed
}

/// What the store says of the bench's runs afterwards.
struct Checked {
    seen: u64,
    succeeded: u64,
    /// Dispatch → claim, ms, sorted.
    queue_lat: Vec<f64>,
    /// Created → completed, ms, sorted.
    e2e: Vec<f64>,
}

/// Read back every run of workspace `bench`: how many, how many succeeded
/// on their first attempt, and their latencies.
async fn check_runs(service: &OperationRunService) -> CliResult<Checked> {
    let mut queue_lat = Vec::new();
    let mut e2e = Vec::new();
    let mut seen = 0u64;
    let mut succeeded = 0u64;
    let mut before = None;
    loop {
        let page = service
            .list(&RunFilter { workspace_id: Some("bench".into()), before, limit: 1000, ..RunFilter::default() })
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        for r in &page {
            seen += 1;
            if r.outcome == RunOutcome::Succeeded && r.attempt == 1 {
                succeeded += 1;
            }
            if let (Some(s), Some(c)) = (r.started_at, r.completed_at) {
                queue_lat.push((s - r.queued_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                e2e.push((c - r.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            }
        }
    }
    queue_lat.sort_by(f64::total_cmp);
    e2e.sort_by(f64::total_cmp);
    Ok(Checked { seen, succeeded, queue_lat, e2e })
}

/// One bench run of `operation` in `workspace`, as the bench's service actor.
fn bench_request(operation: &str, workspace: &str) -> DispatchRequest {
    DispatchRequest {
        operation: operation.into(),
        scope: Scope { workspace_id: workspace.into(), ..Scope::default() },
        initiator: Initiator::service("bench-actor"),
        source: SourceSurface::Cli,
        context: json!({}),
        params: json!({}),
    }
}

/// `--truth-only`: the same N runs through the run truth alone, with no
/// queue and no worker. Each of `--dispatchers` tasks takes `--batch` runs
/// at a time: authorizes the dispatch (one decision for the batch, as the
/// dispatcher shares it), dispatches them in one transaction, claims them in
/// one write, reauthorizes (one decision, as the claim batcher shares it)
/// and finishes them succeeded in one write. Batches this big are the most
/// the worker's batchers ever take, so this rate is the ceiling the truth's
/// own writes set on `bench` on this store and machine.
async fn bench_truth_only(
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
    let Checked { seen, succeeded, .. } = check_runs(service).await?;
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

fn print_report(report: &Value, json_out: bool) -> CliResult<()> {
    if json_out {
        outln!("{}", serde_json::to_string(report).unwrap_or_default())
    } else {
        outln!("{}", serde_json::to_string_pretty(report).unwrap_or_default())
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

struct Count(Arc<AtomicU64>);

#[async_trait]
impl JobHandler for Count {
    async fn handle(&self, _payload: Value) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Bare apalis: the same N jobs, no run truth.
async fn baseline(app: &App, n: u64, concurrency: usize) -> CliResult<f64> {
    let mut cfg = app.config.queue.clone();
    cfg.namespace = format!("{}-baseline-{}", cfg.namespace, uuid::Uuid::now_v7().simple());
    let queue = Queue::open(&cfg, app.db.sqlite.clone()).await.map_err(|e| CliError::Runtime(format!("{e:#}")))?;
    let count = Arc::new(AtomicU64::new(0));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let opts =
        WorkerOptions { name_prefix: "bench-baseline".into(), concurrency, shutdown_grace: Duration::from_secs(10) };
    let started = Instant::now();
    let (q, c) = (queue.clone(), cfg.clone());
    let handler = Arc::new(Count(count.clone()));
    let worker = tokio::spawn(async move {
        run_worker(q, c, opts, handler, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await
    });
    let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
    queue.push_many(&ids).await.map_err(|e| CliError::Runtime(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while count.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(CliError::Runtime("baseline did not finish in 10 minutes".into()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = worker.await;
    Ok(rate)
}

/// `--stale N`: N runs left running by a worker that died an hour ago
/// (written through the service with a clock an hour back), then one timed
/// reconcile pass through the scheduler's reconciler step (requeue + re-push,
/// on a queue of its own) and a check that every run was requeued once.
async fn bench_reconcile(
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
    let mut cfg = app.config.queue.clone();
    cfg.namespace = format!("{}-stale-{}", cfg.namespace, uuid::Uuid::now_v7().simple());
    let queue: Arc<dyn JobQueue> =
        Arc::new(Queue::open(&cfg, app.db.sqlite.clone()).await.map_err(|e| rt(format!("{e:#}")))?);
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
        "queue": format!("{:?}", app.config.queue.backend).to_lowercase(),
        "stale_runs": n,
        "setup_seconds": setup_secs,
        "reconcile_seconds": secs,
        "runs_reconciled_per_second": n as f64 / secs,
        "check": {"requeued": requeued, "queued_on_attempt_2": queued, "jobs_pushed": depth, "lost_races": report.lost_races},
    });
    let printed = print_report(&report_json, json_out);
    if requeued != n || queued != n || depth != Some(n) {
        return Err(rt(format!(
            "check failed: {requeued} requeued, {queued} queued on attempt 2, {depth:?} jobs pushed (want {n} each)"
        )));
    }
    printed
}
