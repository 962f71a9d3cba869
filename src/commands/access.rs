//! `oprun access apply`: make the access tables equal to a file.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::store_err;
use crate::app::{App, CliError, CliResult};

#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Make the access tables equal to FILE (unlisted actors are disabled,
    /// workspaces suspended, environments offboarded; roles, memberships and
    /// connections are replaced).
    Apply {
        /// The access TOML file.
        file: PathBuf,
    },
}

/// Apply `file` to the store.
pub async fn access_apply(path: Option<&Path>, file: &Path) -> CliResult<()> {
    let text =
        std::fs::read_to_string(file).map_err(|e| CliError::Usage(format!("{}: cannot read: {e}", file.display())))?;
    let app = App::open(path).await?;
    let access = app.parse_access(&text, &file.display().to_string())?;
    let report = app.db.access.apply_access(&access).await.map_err(store_err)?;
    let actor = oprun_shared::Initiator::user(oprun_shared::access::LOCAL_ADMIN);
    audit_apply(&app, &actor, &file.display().to_string(), &report).await?;
    outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default())?;
    Ok(())
}

/// The audit row of an applied access file: who applied which file, and
/// what it changed.
pub async fn audit_apply(
    app: &App,
    actor: &oprun_shared::Initiator,
    file: &str,
    report: &oprun_shared::access::ApplyReport,
) -> CliResult<()> {
    let entry = oprun_shared::AuditEntry::new(app.clock.now(), actor.clone(), "access.apply")
        .details(serde_json::json!({ "file": file, "changed": report }));
    app.service.record(entry).await.map_err(store_err)
}
