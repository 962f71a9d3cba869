//! `oprun dispatch`: start a run by hand, as an actor of the access truth.

use std::path::Path;
use std::sync::Arc;

use clap::Args;
use oprun_scheduler::{DispatchError, DispatchOutcome, Dispatcher};
use oprun_shared::{DispatchRequest, Initiator, JobQueue, Scope, SourceSurface};
use serde_json::Value;

use super::store_err;
use crate::app::{App, CliError, CliResult};

#[derive(Debug, Args)]
pub struct DispatchArgs {
    /// The operation (as named in the config's catalog).
    pub operation: String,
    /// The workspace.
    #[arg(long)]
    pub workspace: String,
    /// The managed environment (for environment-scoped operations).
    #[arg(long)]
    pub environment: Option<String>,
    /// A target kind inside the scope.
    #[arg(long, requires = "target_id")]
    pub target_type: Option<String>,
    /// A target id inside the scope.
    #[arg(long, requires = "target_type")]
    pub target_id: Option<String>,
    /// The actor the run is started as (required). The run is authorized
    /// against the access truth now and again when it executes, so it needs
    /// an actor there: the CLI's local administrator (`user:local-admin`,
    /// what `runs list`, `runs show` and `reconcile` act as without --as) is
    /// none.
    #[arg(long = "as", value_name = "ACTOR")]
    pub actor: String,
    /// Parameters, a JSON object.
    #[arg(long, default_value = "{}")]
    pub params: String,
    /// Start no earlier than this time (RFC 3339, e.g. 2026-12-05T06:00:00Z;
    /// at most a year from now).
    #[arg(long, value_parser = parse_at, conflicts_with = "delay")]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Start no earlier than this long from now (e.g. 90s, 10m, 2h).
    #[arg(long = "in", value_parser = parse_in, value_name = "DELAY")]
    pub delay: Option<std::time::Duration>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--at`: an RFC 3339 time.
fn parse_at(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{e} (e.g. 2026-12-05T06:00:00Z)"))
}

/// The longest `--in`: a year.
const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// `--in`: a delay of at most a year.
fn parse_in(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 90s, 10m, 2h)"))?;
    if d > MAX_DELAY {
        return Err("at most a year (366d)".into());
    }
    Ok(d)
}

/// `--params`: a JSON object (checked before any store is opened).
pub fn parse_params(text: &str) -> CliResult<Value> {
    let v: Value = serde_json::from_str(text).map_err(|e| CliError::Usage(format!("--params is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(CliError::Usage("--params must be a JSON object".into()));
    }
    Ok(v)
}

/// Dispatch one run.
pub async fn dispatch(path: Option<&Path>, args: DispatchArgs) -> CliResult<()> {
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
        available_at: match (args.at, args.delay) {
            (Some(at), _) if at > app.clock.now() + chrono::Duration::from_std(MAX_DELAY).unwrap_or_default() => {
                return Err(CliError::Usage(format!("--at {}: at most a year (366d) from now", at.to_rfc3339())));
            }
            (Some(at), _) => Some(at),
            (None, Some(d)) => {
                Some(app.clock.now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero()))
            }
            (None, None) => None,
        },
    };
    let outcome = dispatcher.dispatch(req).await.map_err(|e| match e {
        DispatchError::Invalid(m) => CliError::Usage(m),
        DispatchError::Store(e) => CliError::Runtime(e.to_string()),
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
