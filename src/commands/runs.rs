//! `oprun runs list|show|retry|cancel`: runs as an actor (or the local
//! administrator) sees them, and the operator actions on one.

use std::path::Path;

use clap::{Args, Subcommand};
use oprun_shared::access::LOCAL_ADMIN;
use oprun_shared::{
    OperationRun, RunFilter, RunOutcome, RunStatus, RunView, ServiceError, TransitionError, Viewer, run_detail,
};

use oprun_scheduler::RunReads;

use super::{action_err, known_actor, operator, store_err};
use crate::app::{App, CliError, CliResult};

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first.
    List(ListArgs),
    /// One run, with its guidance.
    Show(ShowArgs),
    /// Retry a blocked or failed run (a new run linked to it), or, with
    /// filters instead of an id, every run they match.
    Retry(ActArgs),
    /// Cancel a queued run, or ask a running one to stop; or, with filters
    /// instead of an id, every run they match.
    Cancel(ActArgs),
}

/// The filters runs are listed and acted on by.
#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// queued, running or completed.
    #[arg(long)]
    pub status: Option<String>,
    /// pending, succeeded, partially_succeeded, failed, blocked or cancelled.
    #[arg(long)]
    pub outcome: Option<String>,
    /// One operation.
    #[arg(long)]
    pub operation: Option<String>,
    /// One workspace.
    #[arg(long)]
    pub workspace: Option<String>,
    /// One environment.
    #[arg(long)]
    pub environment: Option<String>,
    /// One reason code (e.g. execution.environment_not_operable).
    #[arg(long)]
    pub reason: Option<String>,
    /// Runs dispatched by this schedule.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Runs started by ACTOR or KIND:ACTOR (user, service or schedule).
    #[arg(long)]
    pub initiator: Option<String>,
    /// Created at or after TIME (RFC 3339) or this long ago (e.g. 2h).
    #[arg(long, value_name = "TIME|AGO")]
    pub created_after: Option<String>,
    /// Created before TIME or this long ago.
    #[arg(long, value_name = "TIME|AGO")]
    pub created_before: Option<String>,
    /// Completed at or after TIME or this long ago.
    #[arg(long, value_name = "TIME|AGO")]
    pub completed_after: Option<String>,
    /// Completed before TIME or this long ago.
    #[arg(long, value_name = "TIME|AGO")]
    pub completed_before: Option<String>,
}

impl FilterArgs {
    /// Whether any filter is given.
    fn any(&self) -> bool {
        let FilterArgs {
            status,
            outcome,
            operation,
            workspace,
            environment,
            reason,
            schedule,
            initiator,
            created_after,
            created_before,
            completed_after,
            completed_before,
        } = self;
        [status, outcome, operation, workspace, environment, reason, schedule, initiator].iter().any(|v| v.is_some())
            || [created_after, created_before, completed_after, completed_before].iter().any(|v| v.is_some())
    }

    /// The run filter (bad values exit 2 naming their flag).
    pub fn filter(self, now: chrono::DateTime<chrono::Utc>) -> CliResult<RunFilter> {
        let time = |flag: &str, v: Option<String>| -> CliResult<Option<chrono::DateTime<chrono::Utc>>> {
            v.map(|s| parse_time_or_ago(&s, now).map_err(|e| CliError::Usage(format!("{flag}: {e}")))).transpose()
        };
        let initiator = self
            .initiator
            .map(|s| {
                s.parse::<oprun_shared::InitiatorFilter>().map_err(|e| CliError::Usage(format!("--initiator: {e}")))
            })
            .transpose()?;
        for (flag, v) in [
            ("--operation", &self.operation),
            ("--workspace", &self.workspace),
            ("--environment", &self.environment),
            ("--reason", &self.reason),
            ("--schedule", &self.schedule),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > 200 || v.chars().any(char::is_control))
            {
                return Err(CliError::Usage(format!("{flag}: must be 1–200 printable characters")));
            }
        }
        Ok(RunFilter {
            status: parse_enum::<RunStatus>("--status", self.status)?,
            outcome: parse_enum::<RunOutcome>("--outcome", self.outcome)?,
            operation: self.operation,
            workspace_id: self.workspace,
            environment_id: self.environment,
            reason_code: self.reason,
            schedule: self.schedule,
            initiator,
            created_after: time("--created-after", self.created_after)?,
            created_before: time("--created-before", self.created_before)?,
            completed_after: time("--completed-after", self.completed_after)?,
            completed_before: time("--completed-before", self.completed_before)?,
            ..RunFilter::default()
        })
    }
}

/// An RFC 3339 time, or a duration ago (`2h`, `7d`).
pub fn parse_time_or_ago(s: &str, now: chrono::DateTime<chrono::Utc>) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = humantime::parse_duration(s)
        .map_err(|_| format!("'{}' is neither an RFC 3339 time nor a duration ago (e.g. 2h)", s.escape_debug()))?;
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("'{s}' is too far back"))
}

#[derive(Debug, Args)]
pub struct ActArgs {
    /// The run id (or, instead, filters: every run they match).
    pub id: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// With filters: list what would be done, and do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With filters: act on at most this many runs (default 1000, at most 10000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max: Option<u32>,
    /// The operator acting (required: authorized against current access
    /// truth, where the CLI's local administrator, `user:local-admin`, is no
    /// actor).
    #[arg(long = "as", value_name = "ACTOR")]
    pub actor: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Cursor: only runs older than this run id (the last id of the
    /// previous page).
    #[arg(long, value_name = "RUN_ID")]
    pub before: Option<String>,
    /// Only queued runs waiting for their time: delayed dispatches, retries
    /// waiting for their next attempt, snoozed runs.
    #[arg(long)]
    pub waiting: bool,
    /// Only what this actor may see. Without --as: every run, as the store's
    /// local administrator (`user:local-admin`: whoever can open the store
    /// holds every capability).
    #[arg(long = "as", value_name = "ACTOR")]
    pub actor: Option<String>,
    /// At most this many (1–1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The run id.
    pub id: String,
    /// Show it as this actor sees it. Without --as: as the store's local
    /// administrator (`user:local-admin`), with every capability.
    #[arg(long = "as", value_name = "ACTOR")]
    pub actor: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_enum<T: std::str::FromStr>(flag: &str, v: Option<String>) -> CliResult<Option<T>>
where
    T::Err: std::fmt::Display,
{
    v.map(|s| s.parse::<T>().map_err(|e| CliError::Usage(format!("{flag}: {e}")))).transpose()
}

/// What `--as ACTOR` may see, decided as the API decides it.
fn reads(app: &App) -> RunReads {
    RunReads::new(app.service.clone(), app.authorizer.clone())
}

/// `runs list`.
pub async fn runs_list(path: Option<&Path>, args: ListArgs) -> CliResult<()> {
    let now = chrono::Utc::now();
    let mut filter = args.filter.filter(now)?;
    filter.before = args
        .before
        .as_deref()
        .map(|b| b.parse().map_err(|_| CliError::Usage(format!("--before: '{b}' is not a run id (a UUID)"))))
        .transpose()?;
    let app = App::open(path).await?;
    filter.limit = args.limit;
    filter.waiting_at = args.waiting.then(|| app.service.clock().now());
    let runs = match &args.actor {
        Some(actor) => reads(&app).list(actor, filter).await.map_err(action_err)?,
        None => app.service.list(&filter).await.map_err(store_err)?,
    };
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

/// `runs show`.
pub async fn runs_show(path: Option<&Path>, args: ShowArgs) -> CliResult<()> {
    let id: uuid::Uuid =
        args.id.parse().map_err(|_| CliError::Usage(format!("'{}' is not a run id (a UUID)", args.id)))?;
    let app = App::open(path).await?;
    let (run, detail) = match &args.actor {
        // What the viewer may not see does not exist for it.
        Some(actor) => reads(&app).detail(actor, id).await.map_err(action_err)?,
        None => {
            let run = match app.service.get(id).await {
                Ok(run) => run,
                Err(ServiceError::Transition(TransitionError::NotFound(_))) => {
                    return Err(CliError::Usage(format!("run {id} not found")));
                }
                Err(e) => return Err(store_err(e)),
            };
            let detail = run_detail(&app.service, &app.authorizer, &run, &local_admin(&app), &|_: &str| true)
                .await
                .map_err(store_err)?;
            (run, detail)
        }
    };
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
    if run.refusals > 1 {
        let last = run.last_refused_at.map(|t| t.to_string()).unwrap_or_default();
        outln!("refused    {} ticks in a row, the last at {last}", run.refusals)?;
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

/// `runs retry` (`retry`) or `runs cancel`.
pub async fn runs_act(path: Option<&Path>, args: ActArgs, retry: bool) -> CliResult<()> {
    let raw = match (&args.id, args.filter.any()) {
        (Some(_), true) => return Err(CliError::Usage("give a run id or filters, not both".into())),
        (None, false) => {
            return Err(CliError::Usage(
                "give a run id, or filters (e.g. --reason, --operation, --workspace) to act on every run they match"
                    .into(),
            ));
        }
        (None, true) => return runs_act_by_filter(path, args, retry).await,
        (Some(id), false) => id.clone(),
    };
    if args.dry_run || args.max.is_some() {
        return Err(CliError::Usage("--dry-run and --max go with filters, not a run id".into()));
    }
    let id: uuid::Uuid = raw.parse().map_err(|_| CliError::Usage(format!("'{raw}' is not a run id (a UUID)")))?;
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

/// `runs retry|cancel` with filters: every run they match, each authorized
/// and audited on its own.
async fn runs_act_by_filter(path: Option<&Path>, args: ActArgs, retry: bool) -> CliResult<()> {
    let filter = args.filter.filter(chrono::Utc::now())?;
    let app = App::open(path).await?;
    let actor = known_actor(&app, &args.actor).await?;
    let operator = operator(&app).await?;
    let action = if retry { oprun_scheduler::BulkAction::Retry } else { oprun_scheduler::BulkAction::Cancel };
    let report = operator.act_on_filter(&actor, action, filter, args.max, args.dry_run).await.map_err(action_err)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default())?;
        return Ok(());
    }
    for r in &report.runs {
        let scope = match &r.environment_id {
            Some(e) => format!("{}/{e}", r.workspace_id),
            None => r.workspace_id.clone(),
        };
        let new = r.new_run_id.map(|n| format!(" -> {n}")).unwrap_or_default();
        let why = r.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default();
        outln!("{}  {:<26}  {:<22}  {}{new}{why}", r.run_id, r.operation, scope, r.result)?;
    }
    let verb = if args.dry_run { "would act on" } else { "acted on" };
    let more = if report.more {
        format!("; more match: run it again or raise --max (was {})", report.max)
    } else {
        String::new()
    };
    outln!("{verb} {} run(s){more}", report.matched)?;
    Ok(())
}
