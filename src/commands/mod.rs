//! The commands, one file per family: `serve.rs` (`up`, `worker`,
//! `scheduler`), `access.rs`, `dispatch.rs`, `runs.rs` (list, show, retry,
//! cancel), `reconcile.rs` and `tokens.rs`; `oprun bench` is `crate::bench`.
//! Here: which command runs, and what several of them share (store errors,
//! known actors, the operator and its errors).

pub mod access;
pub mod audit;
pub mod dispatch;
pub mod prune;
pub mod reconcile;
pub mod runs;
pub mod schedules;
pub mod serve;
pub mod tokens;

use std::sync::Arc;

use oprun_scheduler::{ActionError, Dispatcher, Operator};
use oprun_shared::{Initiator, JobQueue};

use self::access::AccessCommand;
use self::runs::RunsCommand;
use self::tokens::TokenCommand;
use crate::app::{App, CliError, CliResult};
use crate::{Cli, Command};

/// Run the command `cli` names.
pub async fn run(cli: Cli) -> CliResult<()> {
    // Argument errors come before any store is opened: nothing is written.
    if let Command::Dispatch(args) = &cli.command {
        dispatch::parse_params(&args.params)?;
    }
    let path = cli.config.as_deref();
    match cli.command {
        Command::Migrate => {
            let app = App::open(path).await?;
            outln!("migrated {}", oprun_shared::redact::redact_url(&app.config.store.url))?;
            Ok(())
        }
        Command::Access(AccessCommand::Apply { file }) => access::access_apply(path, &file).await,
        Command::Dispatch(args) => dispatch::dispatch(path, args).await,
        Command::Runs(RunsCommand::List(args)) => runs::runs_list(path, args).await,
        Command::Runs(RunsCommand::Show(args)) => runs::runs_show(path, args).await,
        Command::Runs(RunsCommand::Retry(args)) => runs::runs_act(path, args, true).await,
        Command::Runs(RunsCommand::Cancel(args)) => runs::runs_act(path, args, false).await,
        Command::Reconcile(args) => reconcile::reconcile(path, args).await,
        Command::Prune(args) => prune::prune(path, args).await,
        Command::Audit(args) => audit::audit(path, args).await,
        Command::Schedules(cmd) => schedules::run(path, cmd).await,
        Command::Token(TokenCommand::Create { actor, expires_in, json }) => {
            tokens::token_create(path, &actor, expires_in, json).await
        }
        Command::Token(TokenCommand::Revoke { id }) => tokens::token_revoke(path, &id).await,
        Command::Bench(args) => crate::bench::bench(path, args).await,
        Command::Up => serve::serve(path, true, true).await,
        Command::Worker => serve::serve(path, true, false).await,
        Command::Scheduler => serve::serve(path, false, true).await,
    }
}

/// A store failure: exit 1.
fn store_err(e: impl std::fmt::Display) -> CliError {
    CliError::Runtime(format!("run store: {e}"))
}

/// The operator over the configured queue.
async fn operator(app: &App) -> CliResult<Operator> {
    let queue = app.queue().await?;
    Ok(Operator::new(Dispatcher::new(app.service.clone(), app.authorizer.clone(), queue as Arc<dyn JobQueue>)))
}

/// An operator action's refusal, by its exit code.
fn action_err(e: ActionError) -> CliError {
    match e {
        ActionError::NotFound(_) | ActionError::NoSuchSchedule(_) | ActionError::Invalid(_) => {
            CliError::Usage(e.to_string())
        }
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
