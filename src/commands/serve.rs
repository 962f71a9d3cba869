//! `oprun up`, `worker` and `scheduler`: the long-running roles (scheduler
//! and reconciler loops, the API, the worker) in one process, until SIGINT
//! or SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use oprun_scheduler::{Dispatcher, Operator, Scheduler, run_loops};
use oprun_shared::{Initiator, JobQueue};
use oprun_worker::queue::{WorkerOptions, run_worker};
use oprun_worker::{Operations, Runner};
use tokio::sync::watch;
use tracing::info;

use super::store_err;
use crate::app::{App, CliError, CliResult, process_name};

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Run the worker, the scheduler side, or both, until told to stop.
pub async fn serve(path: Option<&Path>, worker: bool, scheduler: bool) -> CliResult<()> {
    let app = App::open(path).await?;
    if scheduler && let Some(access) = app.configured_access()? {
        let report = app.db.access.apply_access(&access).await.map_err(store_err)?;
        super::access::audit_apply(&app, &Initiator::service("oprun-up"), "configured access file", &report).await?;
        info!(actors = report.actors, workspaces = report.workspaces, "access file applied");
    }
    let queue = app.queue().await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    if scheduler {
        let dispatcher =
            Dispatcher::new(app.service.clone(), app.authorizer.clone(), queue.clone() as Arc<dyn JobQueue>);
        let sched = Scheduler::new(
            &app.config.schedules,
            dispatcher.clone(),
            app.db.access.clone(),
            app.db.ticks.clone(),
            app.clock.clone(),
            process_name("scheduler"),
            app.config.scheduler.tick.saturating_mul(5).max(Duration::from_secs(5)),
        )
        .map_err(|e| CliError::Usage(e.to_string()))?
        .abandoned_tick_after(app.config.scheduler.abandoned_tick_after);
        let actor = Initiator::service(app.config.scheduler.reconciler_actor.clone());
        let (tick, every) = (app.config.scheduler.tick, app.config.scheduler.reconcile_interval);
        let rx = stop_rx.clone();
        let retention = oprun_scheduler::Retention {
            policy: app.config.retention.clone(),
            ticks: app.db.ticks.clone(),
            actor: Initiator::service(crate::commands::prune::RETENTION_ACTOR),
        };
        tasks.spawn(async move {
            run_loops(Some(sched), dispatcher, actor, tick, every, Some(retention), stopped(rx)).await;
            Ok(())
        });
    }
    let api = scheduler && app.config.api.enabled;
    if api {
        let state = api_state(&app, &queue);
        let (bind, rx) = (app.config.api.bind.clone(), stop_rx.clone());
        // Bind now so that a taken port is a start-up error, not a silent gap.
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .map_err(|e| CliError::Usage(format!("api.bind {bind}: cannot listen: {e}")))?;
        tasks.spawn(async move { oprun_scheduler::api::serve_on(listener, state, stopped(rx)).await });
    }
    if !api && app.config.metrics.enabled {
        let state = api_state(&app, &queue);
        let (bind, rx) = (app.config.metrics.bind.clone(), stop_rx.clone());
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .map_err(|e| CliError::Usage(format!("metrics.bind {bind}: cannot listen: {e}")))?;
        tasks.spawn(async move { oprun_scheduler::api::serve_metrics_on(listener, state, stopped(rx)).await });
    }
    if worker {
        let worker_id = process_name("worker");
        let budgets = budgets(&app)?;
        let providers = oprun_worker::http::Providers::from_config(&app.config.providers, app.config.dir(), &budgets)
            .map_err(|e| CliError::Usage(format!("config: {e}")))?;
        let mut operations = Operations::builtin();
        providers.register(&mut operations);
        operations.check(&app.catalog).map_err(|e| CliError::Usage(format!("config: {e}")))?;
        let runner =
            Runner::new(app.service.clone(), app.authorizer.clone(), operations, worker_id).with_budgets(budgets);
        let opts = WorkerOptions {
            name_prefix: "oprun".into(),
            concurrency: app.config.worker.concurrency,
            shutdown_grace: app.config.worker.shutdown_grace,
        };
        let (queue, qcfg, rx) = (queue.clone(), app.config.queue.clone(), stop_rx.clone());
        tasks.spawn(async move { run_worker((*queue).clone(), qcfg, opts, Arc::new(runner), stopped(rx)).await });
    }
    info!(
        store = %oprun_shared::redact::redact_url(&app.config.store.url),
        worker,
        scheduler,
        "oprun is running; stop with Ctrl-C or SIGTERM"
    );
    tokio::select! {
        _ = shutdown_signal() => info!("shutting down: no new runs are fetched; in-flight runs get the grace period"),
        Some(done) = tasks.join_next() => {
            let _ = stop_tx.send(true);
            return match done {
                Ok(Ok(())) => Err(CliError::Runtime("a component stopped unexpectedly".into())),
                Ok(Err(e)) => Err(CliError::Runtime(format!("{e:#}"))),
                Err(e) => Err(CliError::Runtime(format!("a component crashed: {e}"))),
            };
        }
    }
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            return Err(CliError::Runtime(format!("{e:#}")));
        }
    }
    Ok(())
}

/// What the API (or the metrics listener) of this process serves from, with
/// the Prometheus recorder installed (once per process).
fn api_state(app: &App, queue: &Arc<oprun_worker::queue::Queue>) -> oprun_scheduler::api::ApiState {
    static RECORDER: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    let metrics = RECORDER
        .get_or_init(|| {
            oprun::metrics::prometheus_builder()
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone();
    oprun_scheduler::api::ApiState {
        operator: Operator::new(Dispatcher::new(
            app.service.clone(),
            app.authorizer.clone(),
            queue.clone() as Arc<dyn JobQueue>,
        )),
        access: app.db.access.clone(),
        tokens: app.db.tokens.clone(),
        ticks: app.db.ticks.clone(),
        queue: queue.clone() as Arc<dyn JobQueue>,
        schedules: Arc::new(app.config.schedules.clone()),
        clock: app.clock.clone(),
        metrics,
    }
}

/// The provider budgets of this worker process: shared through Redis when
/// `budgets.redis_url` (or `OPRUN_REDIS_URL`) names one; otherwise kept in
/// the process, which a Postgres deployment (several workers) is told.
fn budgets(app: &App) -> CliResult<oprun_worker::budget::Budgets> {
    use oprun_worker::budget::Budgets;
    let limited = app
        .config
        .providers
        .values()
        .any(|p| p.concurrency_per_environment.is_some() || p.rate_per_environment.is_some());
    let budgets = Budgets::from_config(&app.config.budgets).map_err(CliError::Usage)?;
    match &app.config.budgets.redis_url {
        Some(url) => {
            info!(redis = %oprun_shared::redact::redact_url(url), "provider budgets are shared by every worker through Redis");
        }
        None if limited && app.db.runs.backend() == "postgres" => tracing::warn!(
            "provider budgets are per process: without budgets.redis_url (or OPRUN_REDIS_URL) each worker \
             process keeps its own concurrency_per_environment and rate_per_environment, so N workers send \
             up to N times them to one environment"
        ),
        None => {}
    }
    Ok(budgets)
}
