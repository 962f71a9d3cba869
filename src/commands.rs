//! The commands.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use oprun_scheduler::{
    ActionError, DispatchError, DispatchOutcome, Dispatcher, Operator, Scheduler, reconcile_and_push, run_loops,
};
use oprun_shared::access::LOCAL_ADMIN;
use oprun_shared::{
    DispatchRequest, Initiator, JobQueue, OperationRun, ReconcileFilter, RunFilter, RunOutcome, RunStatus, RunView,
    Scope, ServiceError, SourceSurface, TransitionError, Viewer, run_detail,
};
use oprun_worker::queue::{WorkerOptions, run_worker};
use oprun_worker::{Operations, Runner};
use serde_json::Value;
use tokio::sync::watch;
use tracing::info;

use crate::app::{App, CliError, CliResult, process_name};
use crate::{
    AccessCommand, ActArgs, Cli, Command, DispatchArgs, ListArgs, ReconcileArgs, RunsCommand, ShowArgs, TokenCommand,
};

pub async fn run(cli: Cli) -> CliResult<()> {
    // Argument errors come before any store is opened: nothing is written.
    if let Command::Dispatch(args) = &cli.command {
        parse_params(&args.params)?;
    }
    let path = cli.config.as_deref();
    match cli.command {
        Command::Migrate => {
            let app = App::open(path).await?;
            outln!("migrated {}", oprun_shared::redact::redact_url(&app.config.store.url))?;
            Ok(())
        }
        Command::Access(AccessCommand::Apply { file }) => access_apply(path, &file).await,
        Command::Dispatch(args) => dispatch(path, args).await,
        Command::Runs(RunsCommand::List(args)) => runs_list(path, args).await,
        Command::Runs(RunsCommand::Show(args)) => runs_show(path, args).await,
        Command::Runs(RunsCommand::Retry(args)) => runs_act(path, args, true).await,
        Command::Runs(RunsCommand::Cancel(args)) => runs_act(path, args, false).await,
        Command::Reconcile(args) => reconcile(path, args).await,
        Command::Token(TokenCommand::Create { actor, expires_in, json }) => {
            token_create(path, &actor, expires_in, json).await
        }
        Command::Token(TokenCommand::Revoke { id }) => token_revoke(path, &id).await,
        Command::Bench(b) => {
            let args = crate::bench::BenchArgs {
                runs: b.runs,
                concurrency: b.concurrency,
                dispatchers: b.dispatchers,
                batch: b.batch,
                rate: b.rate,
                stale: b.stale,
                baseline: b.baseline,
                truth_only: b.truth_only,
                json: b.json,
            };
            crate::bench::bench(path, args).await
        }
        Command::Up => serve(path, true, true).await,
        Command::Worker => serve(path, true, false).await,
        Command::Scheduler => serve(path, false, true).await,
    }
}

fn parse_params(text: &str) -> CliResult<Value> {
    let v: Value = serde_json::from_str(text).map_err(|e| CliError::Usage(format!("--params is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(CliError::Usage("--params must be a JSON object".into()));
    }
    Ok(v)
}

fn store_err(e: impl std::fmt::Display) -> CliError {
    CliError::Runtime(format!("run store: {e}"))
}

async fn access_apply(path: Option<&std::path::Path>, file: &std::path::Path) -> CliResult<()> {
    let text =
        std::fs::read_to_string(file).map_err(|e| CliError::Usage(format!("{}: cannot read: {e}", file.display())))?;
    let app = App::open(path).await?;
    let access = app.parse_access(&text, &file.display().to_string())?;
    let report = app.db.access.apply_access(&access).await.map_err(store_err)?;
    outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default())?;
    Ok(())
}

async fn dispatch(path: Option<&std::path::Path>, args: DispatchArgs) -> CliResult<()> {
    let params = parse_params(&args.params)?;
    let app = App::open(path).await?;
    if app.catalog.get(&args.operation).is_none() {
        let known: Vec<_> = app.catalog.operations.keys().cloned().collect();
        return Err(CliError::Usage(format!(
            "unknown operation '{}' (this config knows: {})",
            args.operation,
            known.join(", ")
        )));
    }
    // An unknown actor is bad input (exit 2, nothing written); a known actor
    // without the right is a refusal (exit 3, audited).
    let kind = match app.db.access.actor_kind(&args.actor).await.map_err(store_err)?.as_deref() {
        None => return Err(CliError::Usage(format!("unknown actor '{}' (see `oprun access apply`)", args.actor))),
        Some("service") => oprun_shared::ActorKind::Service,
        Some(_) => oprun_shared::ActorKind::User,
    };
    let queue = app.queue().await?;
    let dispatcher = Dispatcher::new(app.service.clone(), app.authorizer.clone(), queue as Arc<dyn JobQueue>);
    let req = DispatchRequest {
        operation: args.operation,
        scope: Scope {
            workspace_id: args.workspace,
            environment_id: args.environment,
            target_type: args.target_type,
            target_id: args.target_id,
        },
        initiator: Initiator { kind, id: args.actor },
        source: SourceSurface::Cli,
        context: serde_json::json!({ "correlation_id": uuid::Uuid::now_v7() }),
        params,
    };
    let outcome = dispatcher.dispatch(req).await.map_err(|e| match e {
        DispatchError::Invalid(m) => CliError::Usage(m),
        DispatchError::Store(m) => CliError::Runtime(m),
    })?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&outcome).unwrap_or_default())?;
    }
    match outcome {
        DispatchOutcome::Dispatched { run, deduplicated, push_failed } => {
            if !args.json {
                let note = if deduplicated { " (an active run of this scope already existed)" } else { "" };
                outln!("{} {} {}{note}", run.id, run.status, run.operation)?;
                if push_failed {
                    outln!("warning: the job was not pushed; the reconciler will push it")?;
                }
            }
            Ok(())
        }
        DispatchOutcome::Refused { reason, message, .. } => {
            Err(CliError::Refused(format!("dispatch refused ({reason}): {message}")))
        }
    }
}

fn parse_enum<T: std::str::FromStr>(flag: &str, v: Option<String>) -> CliResult<Option<T>>
where
    T::Err: std::fmt::Display,
{
    v.map(|s| s.parse::<T>().map_err(|e| CliError::Usage(format!("{flag}: {e}")))).transpose()
}

/// What `--as ACTOR` may see: the workspaces where it holds `runs.view`.
async fn visible_workspaces(app: &App, actor: &str) -> CliResult<Vec<String>> {
    app.db.access.workspaces_with(actor, oprun_shared::RUNS_VIEW).await.map_err(store_err)
}

async fn runs_list(path: Option<&std::path::Path>, args: ListArgs) -> CliResult<()> {
    let status = parse_enum::<RunStatus>("--status", args.status)?;
    let outcome = parse_enum::<RunOutcome>("--outcome", args.outcome)?;
    let app = App::open(path).await?;
    let visible = match &args.actor {
        Some(a) => Some(visible_workspaces(&app, a).await?),
        None => None,
    };
    let filter = RunFilter {
        visible_workspaces: visible,
        workspace_id: args.workspace,
        operation: args.operation,
        status,
        outcome,
        limit: args.limit,
        ..RunFilter::default()
    };
    let runs = app.service.list(&filter).await.map_err(store_err)?;
    let views: Vec<RunView> = runs.iter().map(RunView::from).collect();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&views).unwrap_or_default())?;
        return Ok(());
    }
    if views.is_empty() {
        outln!("no runs")?;
        return Ok(());
    }
    outln!(
        "{:<36}  {:<26}  {:<9}  {:<19}  {:<36}  {:<22}  {:<28}  CREATED",
        "ID",
        "OPERATION",
        "STATUS",
        "OUTCOME",
        "REASON",
        "SCOPE",
        "INITIATOR"
    )?;
    for v in &views {
        let scope = match &v.environment_id {
            Some(e) => format!("{}/{e}", v.workspace_id),
            None => v.workspace_id.clone(),
        };
        outln!(
            "{:<36}  {:<26}  {:<9}  {:<19}  {:<36}  {:<22}  {:<28}  {}",
            v.id,
            v.operation,
            v.status.as_str(),
            v.outcome.as_str(),
            v.reason_code.as_deref().unwrap_or("-"),
            scope,
            format!("{}:{}", v.initiator.kind, v.initiator.id),
            v.created_at.format("%Y-%m-%d %H:%M:%S")
        )?;
    }
    Ok(())
}

async fn runs_show(path: Option<&std::path::Path>, args: ShowArgs) -> CliResult<()> {
    let id: uuid::Uuid =
        args.id.parse().map_err(|_| CliError::Usage(format!("'{}' is not a run id (a UUID)", args.id)))?;
    let app = App::open(path).await?;
    let not_found = || CliError::Usage(format!("run {id} not found"));
    let run = match app.service.get(id).await {
        Ok(run) => run,
        Err(ServiceError::Transition(TransitionError::NotFound(_))) => return Err(not_found()),
        Err(e) => return Err(store_err(e)),
    };
    let (viewer, visible): (Viewer, Option<BTreeSet<String>>) = match &args.actor {
        Some(actor) => {
            let visible: BTreeSet<String> = visible_workspaces(&app, actor).await?.into_iter().collect();
            if !visible.contains(&run.workspace_id) {
                return Err(not_found()); // what the viewer may not see does not exist for it
            }
            (app.authorizer.viewer(actor, &run.workspace_id).await.map_err(store_err)?, Some(visible))
        }
        None => (local_admin(&app), None),
    };
    let is_visible = |ws: &str| visible.as_ref().is_none_or(|v| v.contains(ws));
    let detail = run_detail(&app.service, &run, &viewer, &is_visible).await.map_err(store_err)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&detail).unwrap_or_default())?;
        return Ok(());
    }
    print_detail(&run, &detail)
}

/// The local CLI user without `--as` ([`LOCAL_ADMIN`], a user): holds every
/// capability (it can open the store file anyway) and is audited as itself.
fn local_admin(app: &App) -> Viewer {
    Viewer::new(LOCAL_ADMIN, oprun_shared::access::grantable_capabilities(&app.catalog))
}

fn print_detail(run: &OperationRun, d: &oprun_shared::RunDetail) -> CliResult<()> {
    let g = &d.guidance;
    outln!("run        {}", run.id)?;
    outln!("operation  {}", run.operation)?;
    outln!("status     {} / {}", run.status, run.outcome)?;
    if let Some(r) = &run.reason_code {
        outln!("reason     {r}")?;
    }
    let scope = match &run.environment_id {
        Some(e) => format!("{} / {e}", run.workspace_id),
        None => run.workspace_id.clone(),
    };
    outln!("scope      {scope}")?;
    outln!("initiator  {}:{} via {}", run.initiator.kind, run.initiator.id, run.source_surface)?;
    outln!("attempt    {} of {}", run.attempt, run.max_attempts)?;
    if let Some(r) = run.retry_of {
        outln!("retry of   {r}")?;
    }
    outln!("counts     {}", run.summary_counts.to_json())?;
    outln!("created    {}", run.created_at)?;
    if let Some(t) = run.started_at {
        outln!("started    {t}")?;
    }
    if let Some(t) = run.completed_at {
        outln!("completed  {t}")?;
    }
    for f in &run.failure_summary {
        outln!("failure    {}: {}", f.reason_code, f.message)?;
    }
    outln!()?;
    outln!(
        "guidance   [{}] {}",
        serde_json::to_value(g.severity).unwrap_or_default().as_str().unwrap_or("-"),
        g.title
    )?;
    outln!("  why      {}", g.reason)?;
    outln!("  impact   {}", g.impact)?;
    outln!("  next     {} ({})", g.primary_action.label, g.primary_action.key)?;
    for a in &g.secondary_actions {
        outln!("  also     {} ({})", a.label, a.key)?;
    }
    Ok(())
}

async fn reconcile(path: Option<&std::path::Path>, args: ReconcileArgs) -> CliResult<()> {
    let app = App::open(path).await?;
    let operator = operator(&app).await?;
    let filter = ReconcileFilter { operation: args.operation, workspace_id: args.workspace, within: None };
    let report = match &args.actor {
        Some(actor) => {
            let actor = known_actor(&app, actor).await?;
            operator.reconcile(&actor, &filter, args.dry_run).await.map_err(action_err)?
        }
        None => reconcile_and_push(operator.dispatcher(), &Initiator::user(LOCAL_ADMIN), &filter, args.dry_run)
            .await
            .map_err(store_err)?,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default())?;
        return Ok(());
    }
    let verb = if report.dry_run { "would" } else { "did" };
    if report.actions.is_empty() {
        outln!("nothing stale")?;
    }
    for a in &report.actions {
        outln!("{verb} {:?}: {} {} ({})", a.kind, a.run_id, a.operation, a.why)?;
    }
    Ok(())
}

async fn operator(app: &App) -> CliResult<Operator> {
    let queue = app.queue().await?;
    Ok(Operator::new(Dispatcher::new(app.service.clone(), app.authorizer.clone(), queue as Arc<dyn JobQueue>)))
}

fn action_err(e: ActionError) -> CliError {
    match e {
        ActionError::NotFound(_) | ActionError::Invalid(_) => CliError::Usage(e.to_string()),
        ActionError::Forbidden(_) | ActionError::Conflict(_) => CliError::Refused(e.to_string()),
        ActionError::Store(_) => CliError::Runtime(e.to_string()),
    }
}

/// An actor from the access tables, with its kind.
async fn known_actor(app: &App, actor: &str) -> CliResult<Initiator> {
    match app.db.access.actor_kind(actor).await.map_err(store_err)?.as_deref() {
        None => Err(CliError::Usage(format!("unknown actor '{actor}' (see `oprun access apply`)"))),
        Some("service") => Ok(Initiator::service(actor)),
        Some(_) => Ok(Initiator::user(actor)),
    }
}

async fn runs_act(path: Option<&std::path::Path>, args: ActArgs, retry: bool) -> CliResult<()> {
    let id: uuid::Uuid =
        args.id.parse().map_err(|_| CliError::Usage(format!("'{}' is not a run id (a UUID)", args.id)))?;
    let app = App::open(path).await?;
    let actor = known_actor(&app, &args.actor).await?;
    let operator = operator(&app).await?;
    if retry {
        let r = operator.retry(&actor, id).await.map_err(action_err)?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&r).unwrap_or_default())?;
        } else {
            let note = if r.deduplicated { " (an active retry already existed)" } else { "" };
            outln!("{} {} retry of {id}{note}", r.run.id, r.run.status)?;
        }
    } else {
        let c = operator.cancel(&actor, id).await.map_err(action_err)?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&c).unwrap_or_default())?;
        } else {
            match c {
                oprun_shared::Cancelled::Cancelled(run) => outln!("{} cancelled", run.id)?,
                oprun_shared::Cancelled::Requested(run) => {
                    outln!("{} cancel requested: its worker stops it at the next page", run.id)?
                }
            }
        }
    }
    Ok(())
}

async fn token_create(
    path: Option<&std::path::Path>,
    actor: &str,
    expires_in: Option<Duration>,
    json: bool,
) -> CliResult<()> {
    let app = App::open(path).await?;
    known_actor(&app, actor).await?;
    let (token, id, hash) = oprun_scheduler::api::new_token();
    let now = app.clock.now();
    let expires_at = oprun_scheduler::api::expiry(now, expires_in).map_err(CliError::Usage)?;
    app.db.tokens.create_token(&id, &hash, actor, now, expires_at).await.map_err(store_err)?;
    if json {
        let v = serde_json::json!({ "id": id, "actor": actor, "token": token, "expires_at": expires_at });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())?;
    } else {
        outln!("token id  {id}")?;
        outln!("actor     {actor}")?;
        outln!(
            "expires   {}",
            expires_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never (revoke with `oprun token revoke`)".into())
        )?;
        outln!("token     {token}")?;
        outln!("(shown once: only its hash is stored)")?;
    }
    Ok(())
}

async fn token_revoke(path: Option<&std::path::Path>, id: &str) -> CliResult<()> {
    let app = App::open(path).await?;
    if app.db.tokens.revoke_token(id, app.clock.now()).await.map_err(store_err)? {
        outln!("revoked {id}")?;
        Ok(())
    } else {
        Err(CliError::Usage(format!("no live token with id '{id}'")))
    }
}

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

async fn serve(path: Option<&std::path::Path>, worker: bool, scheduler: bool) -> CliResult<()> {
    let app = App::open(path).await?;
    if scheduler && let Some(access) = app.configured_access()? {
        let report = app.db.access.apply_access(&access).await.map_err(store_err)?;
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
        tasks.spawn(async move {
            run_loops(Some(sched), dispatcher, actor, tick, every, stopped(rx)).await;
            Ok(())
        });
    }
    if scheduler && app.config.api.enabled {
        let state = oprun_scheduler::api::ApiState {
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
            metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok(),
        };
        let (bind, rx) = (app.config.api.bind.clone(), stop_rx.clone());
        // Bind now so that a taken port is a start-up error, not a silent gap.
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .map_err(|e| CliError::Usage(format!("api.bind {bind}: cannot listen: {e}")))?;
        tasks.spawn(async move { oprun_scheduler::api::serve_on(listener, state, stopped(rx)).await });
    }
    if worker {
        let worker_id = process_name("worker");
        let providers = oprun_worker::http::Providers::from_config(&app.config.providers, app.config.dir())
            .map_err(|e| CliError::Usage(format!("config: {e}")))?;
        let mut operations = Operations::builtin();
        providers.register(&mut operations);
        let runner = Runner::new(app.service.clone(), app.authorizer.clone(), operations, worker_id);
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
