//! `oprun token create|revoke`: API bearer tokens (stored hashed; printed once).

use std::path::Path;
use std::time::Duration;

use clap::Subcommand;

use super::{known_actor, store_err};
use crate::app::{App, CliError, CliResult};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for an actor and print it once.
    Create {
        /// The actor the token acts as.
        #[arg(long)]
        actor: String,
        /// Lifetime, e.g. `30d`, `12h`, at most `10y` (default: until revoked).
        #[arg(long, value_parser = parse_token_lifetime)]
        expires_in: Option<std::time::Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id.
    Revoke {
        /// The token id (printed at creation).
        id: String,
    },
}

/// A `--expires-in` value: a duration longer than zero and at most
/// [`oprun_scheduler::api::MAX_TOKEN_LIFETIME`] (10y).
fn parse_token_lifetime(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 30d, 12h)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    if d > oprun_scheduler::api::MAX_TOKEN_LIFETIME {
        return Err("must be at most 10y (leave --expires-in out for a token that lives until revoked)".into());
    }
    Ok(d)
}

/// Create a token and print it once.
pub async fn token_create(path: Option<&Path>, actor: &str, expires_in: Option<Duration>, json: bool) -> CliResult<()> {
    let app = App::open(path).await?;
    known_actor(&app, actor).await?;
    let (token, id, hash) = oprun_scheduler::api::new_token();
    let now = app.clock.now();
    let expires_at = oprun_scheduler::api::expiry(now, expires_in).map_err(CliError::Usage)?;
    app.db.tokens.create_token(&id, &hash, actor, now, expires_at).await.map_err(store_err)?;
    audit_token(
        &app,
        "token.create",
        serde_json::json!({ "token_id": id, "for_actor": actor, "expires_at": expires_at }),
    )
    .await?;
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

/// Revoke a token.
pub async fn token_revoke(path: Option<&Path>, id: &str) -> CliResult<()> {
    let app = App::open(path).await?;
    if app.db.tokens.revoke_token(id, app.clock.now()).await.map_err(store_err)? {
        audit_token(&app, "token.revoke", serde_json::json!({ "token_id": id })).await?;
        outln!("revoked {id}")?;
        Ok(())
    } else {
        Err(CliError::Usage(format!("no live token with id '{id}'")))
    }
}

/// The audit row of a token change, by the local administrator (never the
/// token, nor its hash).
async fn audit_token(app: &App, action: &str, details: serde_json::Value) -> CliResult<()> {
    let actor = oprun_shared::Initiator::user(oprun_shared::access::LOCAL_ADMIN);
    let entry = oprun_shared::AuditEntry::new(app.clock.now(), actor, action).details(details);
    app.service.record(entry).await.map_err(store_err)
}
