//! `oprun audit`: the audit log, newest first, narrowed by actor, action,
//! time and run (every row; `--admin` only the administrative acts, rows of
//! no run).

use std::path::Path;

use clap::Args;
use oprun_shared::AuditFilter;

use super::runs::parse_time_or_ago;
use super::store_err;
use crate::app::{App, CliError, CliResult};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Rows by this actor id.
    #[arg(long)]
    pub actor: Option<String>,
    /// Rows of this action (`schedule.pause`), or a prefix ending in `*` (`access.*`).
    #[arg(long)]
    pub action: Option<String>,
    /// Rows at or after TIME (RFC 3339) or this long ago (e.g. 24h).
    #[arg(long, value_name = "TIME|AGO")]
    pub since: Option<String>,
    /// One run's rows.
    #[arg(long, value_name = "RUN_ID")]
    pub run: Option<String>,
    /// Only administrative acts (rows of no run).
    #[arg(long)]
    pub admin: bool,
    /// Cursor: rows older than this row id.
    #[arg(long)]
    pub before: Option<i64>,
    /// At most this many (1–1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `audit`.
pub async fn audit(path: Option<&Path>, args: AuditArgs) -> CliResult<()> {
    let since = args
        .since
        .map(|s| parse_time_or_ago(&s, chrono::Utc::now()).map_err(|e| CliError::Usage(format!("--since: {e}"))))
        .transpose()?;
    let run_id = args
        .run
        .map(|r| r.parse().map_err(|_| CliError::Usage(format!("--run: '{r}' is not a run id (a UUID)"))))
        .transpose()?;
    for (flag, v) in [("--actor", &args.actor), ("--action", &args.action)] {
        if let Some(v) = v
            && (v.is_empty() || v.len() > 200 || v.chars().any(char::is_control))
        {
            return Err(CliError::Usage(format!("{flag}: must be 1–200 printable characters")));
        }
    }
    let app = App::open(path).await?;
    let filter = AuditFilter {
        actor: args.actor,
        action: args.action,
        administrative: args.admin,
        run_id,
        since,
        before: args.before,
        limit: args.limit,
        ..AuditFilter::default()
    };
    let rows = app.service.store().list_audit(&filter).await.map_err(store_err)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default())?;
        return Ok(());
    }
    if rows.is_empty() {
        outln!("no audit rows")?;
        return Ok(());
    }
    for r in &rows {
        let e = &r.entry;
        let subject = match (e.run_id, &e.workspace_id) {
            (Some(id), _) => format!("run {id}"),
            (None, Some(ws)) => format!("workspace {ws}"),
            (None, None) => "-".into(),
        };
        outln!(
            "{:>8}  {}  {:<28}  {:<24}  {:<45}  {}",
            r.id,
            e.at.format("%Y-%m-%d %H:%M:%S"),
            format!("{}:{}", e.actor.kind, e.actor.id),
            e.action,
            subject,
            e.details
        )?;
    }
    Ok(())
}
