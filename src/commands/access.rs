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
    outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default())?;
    Ok(())
}
