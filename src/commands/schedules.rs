//! `oprun schedules list|show|pause|resume|backfill`: the configured
//! schedules at run time. Pauses are stored (every scheduler honours them
//! at its next pass) and audited; a backfill fires a time range's ticks once
//! each, marked as catch-up.

use std::path::Path;
use std::sync::Arc;

use clap::{Args, Subcommand};
use oprun_scheduler::{Scheduler, Schedules};
use oprun_shared::access::LOCAL_ADMIN;

use super::runs::parse_time_or_ago;
use super::{action_err, known_actor, operator};
use crate::app::{App, CliError, CliResult, process_name};

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Every configured schedule: paused or not, its clean streak, next tick.
    List(ViewArgs),
    /// One schedule with its recent tick decisions.
    Show(ShowArgs),
    /// Pause a schedule: its ticks are recorded `skipped_paused` until resumed.
    Pause(PauseArgs),
    /// Resume a paused schedule.
    Resume(ActArgs),
    /// Fire the ticks of a past time range that were never recorded, once each.
    Backfill(BackfillArgs),
}

#[derive(Debug, Args)]
pub struct ViewArgs {
    /// As this actor sees them (default: the local administrator).
    #[arg(long = "as", value_name = "ACTOR")]
    pub actor: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The schedule.
    pub name: String,
    /// Recent ticks shown (1–100).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub ticks: u32,
    #[command(flatten)]
    pub view: ViewArgs,
}

#[derive(Debug, Args)]
pub struct ActArgs {
    /// The schedule.
    pub name: String,
    /// The operator acting (needs `schedules.manage` in its workspace).
    #[arg(long = "as", value_name = "ACTOR")]
    pub actor: String,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    pub act: ActArgs,
    /// Why (shown with the schedule, kept in the audit row).
    #[arg(long)]
    pub note: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub act: ActArgs,
    /// From TIME (RFC 3339) or this long ago (e.g. 6h), inclusive.
    #[arg(long, value_name = "TIME|AGO")]
    pub from: String,
    /// To TIME or this long ago, inclusive (default: now).
    #[arg(long, value_name = "TIME|AGO")]
    pub to: Option<String>,
    /// List the ticks, fire nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

async fn schedules(app: &App) -> CliResult<Schedules> {
    Ok(Schedules::new(operator(app).await?, Arc::new(app.config.schedules.clone()), app.db.ticks.clone()))
}

/// Run a `schedules` command.
pub async fn run(path: Option<&Path>, cmd: SchedulesCommand) -> CliResult<()> {
    let app = App::open(path).await?;
    let s = schedules(&app).await?;
    match cmd {
        SchedulesCommand::List(v) => {
            let actor = v.actor.unwrap_or_else(|| LOCAL_ADMIN.to_string());
            let list = if actor == LOCAL_ADMIN {
                // The local administrator sees every schedule.
                let mut all = vec![];
                for spec in &app.config.schedules {
                    all.push(s.show_unchecked(&spec.name, 5).await.map_err(action_err)?);
                }
                all
            } else {
                s.list(&actor, 5).await.map_err(action_err)?
            };
            if v.json {
                outln!("{}", serde_json::to_string_pretty(&list).unwrap_or_default())?;
                return Ok(());
            }
            outln!("{:<28}  {:<18}  {:<26}  {:<8}  {:>6}  NEXT TICK", "NAME", "CRON", "OPERATION", "STATE", "STREAK")?;
            for v in &list {
                let state = if v.paused.is_some() {
                    "paused"
                } else if v.enabled {
                    "active"
                } else {
                    "disabled"
                };
                let next = v.next_tick.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or("-".into());
                outln!(
                    "{:<28}  {:<18}  {:<26}  {:<8}  {:>6}  {next}",
                    v.name,
                    v.cron,
                    v.operation,
                    state,
                    v.clean_streak
                )?;
            }
        }
        SchedulesCommand::Show(a) => {
            let v = match a.view.actor.as_deref() {
                None | Some(LOCAL_ADMIN) => s.show_unchecked(&a.name, a.ticks).await,
                Some(actor) => s.show(actor, &a.name, a.ticks).await,
            }
            .map_err(action_err)?;
            if a.view.json {
                outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())?;
                return Ok(());
            }
            outln!("schedule   {}", v.name)?;
            outln!("cron       {} ({})", v.cron, v.timezone)?;
            outln!("operation  {}", v.operation)?;
            outln!(
                "scope      {}{}",
                v.workspace,
                v.environment.as_deref().map(|e| format!(" / {e}")).unwrap_or_default()
            )?;
            match &v.paused {
                Some(p) => outln!(
                    "state      paused since {} by {}{}",
                    p.at,
                    p.by.as_deref().unwrap_or("-"),
                    p.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default()
                )?,
                None => outln!("state      {}", if v.enabled { "active" } else { "disabled" })?,
            }
            outln!("streak     {} clean tick(s) in a row", v.clean_streak)?;
            if let Some(t) = v.next_tick {
                outln!("next tick  {t}")?;
            }
            for t in &v.recent_ticks {
                let clean = match t.clean {
                    Some(true) => "clean",
                    Some(false) => "not clean",
                    None if t.settled => "-",
                    None => "unsettled",
                };
                outln!(
                    "  {}  {:<16}  {:<10}  {} run(s)",
                    t.scheduled_for,
                    t.decision.as_str(),
                    clean,
                    t.run_ids.len()
                )?;
            }
        }
        SchedulesCommand::Pause(p) => {
            let actor = known_actor(&app, &p.act.actor).await?;
            let changed = s.set_paused(&actor, &p.act.name, Some(p.note.as_deref())).await.map_err(action_err)?;
            outln!("{} {}", p.act.name, if changed { "paused" } else { "was already paused" })?;
        }
        SchedulesCommand::Resume(a) => {
            let actor = known_actor(&app, &a.actor).await?;
            let changed = s.set_paused(&actor, &a.name, None).await.map_err(action_err)?;
            outln!("{} {}", a.name, if changed { "resumed" } else { "was not paused" })?;
        }
        SchedulesCommand::Backfill(b) => {
            let now = app.clock.now();
            let from = parse_time_or_ago(&b.from, now).map_err(|e| CliError::Usage(format!("--from: {e}")))?;
            let to =
                b.to.as_deref()
                    .map(|t| parse_time_or_ago(t, now).map_err(|e| CliError::Usage(format!("--to: {e}"))))
                    .transpose()?
                    .unwrap_or(now);
            let actor = known_actor(&app, &b.act.actor).await?;
            let dispatcher = operator(&app).await?.dispatcher().clone();
            let scheduler = Scheduler::new(
                &app.config.schedules,
                dispatcher,
                app.db.access.clone(),
                app.db.ticks.clone(),
                app.clock.clone(),
                process_name("backfill"),
                app.config.scheduler.tick.saturating_mul(5).max(std::time::Duration::from_secs(5)),
            )
            .map_err(|e| CliError::Usage(e.to_string()))?;
            let ticks = s.backfill(&actor, &scheduler, &b.act.name, (from, to), b.dry_run).await.map_err(action_err)?;
            if b.json {
                outln!("{}", serde_json::to_string_pretty(&ticks).unwrap_or_default())?;
                return Ok(());
            }
            for t in &ticks {
                let what = match t.decision {
                    Some(d) => d.as_str(),
                    None if b.dry_run => "would fire (unless recorded)",
                    None => "already recorded: left as it was",
                };
                outln!("  {}  {what}", t.scheduled_for)?;
            }
            outln!("{} tick(s) in range", ticks.len())?;
        }
    }
    Ok(())
}
