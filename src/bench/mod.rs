//! `oprun bench`: the product's real path, measured. N runs are dispatched
//! through `OperationRunService` (authorized, written, audited, pushed),
//! workers claim, reauthorize, run a no-op operation and complete every run
//! through the service, on the configured store and queue.
//!
//! The bench needs a scratch store: it loads its own access truth (workspace
//! `bench`), and refuses a store whose access tables hold anything else.
//! One file per mode:
//! - `full.rs`: the real path (default; `--rate` paces the dispatch to read
//!   queue latency below the maximum rate);
//! - `baseline.rs`: `--baseline`, the same N jobs through a bare batched
//!   job queue on the same Postgres database;
//! - `truth.rs`: `--truth-only`, the run truth alone, no queue, no worker;
//! - `reconcile.rs`: `--stale N`, one timed reconcile pass over N stale runs.

mod baseline;
mod full;
mod reconcile;
mod truth;

use std::sync::Arc;

use clap::Args;
use oprun_shared::{
    AccessFile, Catalog, DispatchRequest, Initiator, OperationRunService, RunFilter, RunOutcome, Scope, ServiceConfig,
    SourceSurface,
};
use serde_json::{Value, json};

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
[operations."bench.retry"]
kind = "bench.noop"
capability = "bench.run"
scope = "workspace"
dedup = "none"
lease = "60s"
heartbeat = "20s"
max_attempts = 2
retry = { on = ["provider.unavailable"], backoff = "1ms", backoff_cap = "1ms", jitter = false }
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

// `oprun bench`: its mode and sizes (no doc comment: the `Bench` command's
// own doc is its help).
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Runs to push through.
    #[arg(long, default_value_t = 20_000)]
    pub runs: u64,
    /// Worker concurrency.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Concurrent dispatchers.
    #[arg(long, default_value_t = 4)]
    pub dispatchers: usize,
    /// Runs per dispatch transaction (bulk dispatch).
    #[arg(long, default_value_t = 500)]
    pub batch: u64,
    /// Dispatch at this many runs per second instead of as fast as possible
    /// (to read queue latency below the maximum rate).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Instead: time one reconcile pass over this many stale runs.
    #[arg(long)]
    pub stale: Option<u64>,
    /// Also run N jobs through a bare batched Postgres job queue (one jobs
    /// table, no run truth) and print the full path's rate over it.
    #[arg(long)]
    pub baseline: bool,
    /// Instead: the same N runs through the run truth alone (dispatch,
    /// claim, reauthorize, finish in batches of --batch, --dispatchers at
    /// once), with no queue and no worker: the ceiling the truth sets.
    #[arg(long)]
    pub truth_only: bool,
    /// The real path where every run's first attempt fails
    /// `provider.unavailable` and its retry policy runs it again (after
    /// 1 ms): what a retry over time costs (a retry-later write, a second
    /// claim) against the same N runs without one.
    #[arg(long)]
    pub retry_once: bool,
    /// Each run takes and gives back a permit of a provider budget (on
    /// Redis when `budgets.redis_url` or `OPRUN_REDIS_URL` names one, in
    /// process otherwise): what a budgeted provider request costs.
    #[arg(long)]
    pub budget: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run the mode `args` names.
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
    if args.truth_only
        && (args.baseline || args.rate.is_some() || args.stale.is_some() || args.retry_once || args.budget)
    {
        return Err(CliError::Usage(
            "--truth-only cannot be combined with --baseline, --rate, --stale, --retry-once or --budget".into(),
        ));
    }
    if args.retry_once && args.stale.is_some() {
        return Err(CliError::Usage("--retry-once cannot be combined with --stale".into()));
    }
    let app = App::open(path).await?;
    if args.baseline && app.db.runs.backend() != "postgres" {
        return Err(CliError::Usage("--baseline needs a Postgres store (store.url = postgres://…)".into()));
    }
    // A scratch store only: the bench replaces the access tables.
    let existing = app.db.access.active_workspaces().await.map_err(|e| CliError::Runtime(e.to_string()))?;
    if existing.iter().any(|w| w != "bench" && w != "bench-stale") {
        return Err(CliError::Usage(format!(
            "bench needs a scratch store (it replaces the access tables); this one has workspaces {existing:?}. \
             Point OPRUN_DATABASE_URL at an empty database"
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
        return truth::bench_truth_only(&app, &service, &authorizer, &args).await;
    }
    let queue = app.queue().await?;
    if let Some(stale) = args.stale {
        return reconcile::bench_reconcile(&app, &service, catalog, stale, args.json).await;
    }
    full::bench_full(&app, &service, authorizer, queue, &args).await
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

/// What the store says of the bench's runs afterwards.
struct Checked {
    seen: u64,
    succeeded: u64,
    /// Dispatch → claim, ms, sorted (runs that ran once only).
    queue_lat: Vec<f64>,
    /// Created → completed, ms, sorted.
    e2e: Vec<f64>,
}

/// Read back every run of workspace `bench`: how many, how many succeeded
/// on attempt `attempt` (1, or 2 under `--retry-once`), and their latencies.
async fn check_runs(service: &OperationRunService, attempt: i32) -> CliResult<Checked> {
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
            if r.outcome == RunOutcome::Succeeded && r.attempt == attempt {
                succeeded += 1;
            }
            if let (Some(s), Some(c)) = (r.started_at, r.completed_at) {
                // A run put back to wait was queued again after it first
                // started: its row no longer holds its first wait.
                if r.attempt == 1 && r.snoozes == 0 {
                    queue_lat.push((s - r.queued_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                }
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
        available_at: None,
        operation: operation.into(),
        scope: Scope { workspace_id: workspace.into(), ..Scope::default() },
        initiator: Initiator::service("bench-actor"),
        source: SourceSurface::Cli,
        context: json!({}),
        params: json!({}),
    }
}

fn print_report(report: &Value, json_out: bool) -> CliResult<()> {
    if json_out {
        outln!("{}", serde_json::to_string(report).unwrap_or_default())
    } else {
        outln!("{}", serde_json::to_string_pretty(report).unwrap_or_default())
    }
}
