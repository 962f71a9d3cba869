//! `oprun reconcile`: move stale runs on now, as the on-call actor or the
//! local administrator.

use std::path::Path;

use clap::Args;
use oprun_scheduler::reconcile_and_push;
use oprun_shared::access::LOCAL_ADMIN;
use oprun_shared::{Initiator, ReconcileFilter};

use super::{action_err, known_actor, operator, store_err};
use crate::app::{App, CliResult};

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Report what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this operation.
    #[arg(long)]
    pub operation: Option<String>,
    /// Only this workspace.
    #[arg(long)]
    pub workspace: Option<String>,
    /// The on-call actor (needs `runs.reconcile`). Without --as the
    /// reconcile acts as the store's local administrator and its audit rows
    /// name `user:local-admin`.
    #[arg(long = "as", value_name = "ACTOR")]
    pub actor: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One reconcile pass (or a dry run).
pub async fn reconcile(path: Option<&Path>, args: ReconcileArgs) -> CliResult<()> {
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
