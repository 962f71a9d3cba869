//! `oprun prune [--dry-run]`: one retention pass by the config's
//! `[retention]` windows (what the scheduler's maintenance loop runs every
//! `retention.every`), audited as one summary row.

use std::path::Path;

use clap::Args;
use oprun_shared::Initiator;
use oprun_shared::access::LOCAL_ADMIN;

use super::store_err;
use crate::app::{App, CliResult};

/// The service actor the maintenance loop's retention passes are audited as.
pub const RETENTION_ACTOR: &str = "oprun-retention";

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Count what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep going, pass after pass, until nothing is left to prune (a pass
    /// stops at `retention.max_per_pass`).
    #[arg(long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `prune`.
pub async fn prune(path: Option<&Path>, args: PruneArgs) -> CliResult<()> {
    let app = App::open(path).await?;
    let actor = Initiator::user(LOCAL_ADMIN);
    let policy = &app.config.retention;
    let mut passes = vec![];
    loop {
        let report = app.service.prune(policy, app.db.ticks.as_ref(), &actor, args.dry_run).await.map_err(store_err)?;
        let more = report.more;
        passes.push(report);
        if !(args.all && more) || args.dry_run {
            break;
        }
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&passes).unwrap_or_default())?;
        return Ok(());
    }
    for r in &passes {
        let verb = if r.dry_run { "would delete" } else { "deleted" };
        let by: Vec<String> = r.runs.iter().filter(|(_, n)| **n > 0).map(|(o, n)| format!("{n} {o}")).collect();
        let by = if by.is_empty() { String::new() } else { format!(" ({})", by.join(", ")) };
        outln!(
            "{verb} {} run(s){by}, {} of their audit rows, {} other audit row(s), {} tick(s){}",
            r.total_runs(),
            r.run_audit_rows,
            r.audit_rows,
            r.ticks,
            if r.more { "; more left for the next pass" } else { "" }
        )?;
    }
    Ok(())
}
