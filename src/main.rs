//! `oprun`: one binary for every role — `up` (scheduler, reconciler and
//! worker in one process), `worker`, `scheduler`, `migrate`, `access apply`,
//! `dispatch`, `runs list|show`, `reconcile`. Thin wiring over the crates.

#[macro_use]
mod output;
mod app;
mod bench;
mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// A durable workflow worker with a job queue: every run knows who started
/// it and for which tenant, is authorized again when it executes, and ends in
/// one truthful record.
#[derive(Debug, Parser)]
#[command(name = "oprun", version)]
struct Cli {
    /// The config file (default: the bundled demo on ./oprun.db).
    #[arg(long, short, global = true, env = "OPRUN_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, env = "OPRUN_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scheduler, reconciler and worker in one process (the embedded default).
    Up,
    /// Only the worker.
    Worker,
    /// Only the scheduler and the reconciler loop.
    Scheduler,
    /// Apply the schema to the store.
    Migrate,
    /// Access truth (actors, workspaces, environments, roles, connections).
    #[command(subcommand)]
    Access(AccessCommand),
    /// Start a run by hand.
    Dispatch(DispatchArgs),
    /// Runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Move stale runs on now (what the automatic reconciler does).
    Reconcile(ReconcileArgs),
    /// Measure the real path: N runs dispatched, claimed, reauthorized,
    /// completed and audited (needs a scratch store).
    Bench(BenchCli),
    /// API bearer tokens (stored hashed; printed once).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Args)]
struct BenchCli {
    /// Runs to push through.
    #[arg(long, default_value_t = 20_000)]
    runs: u64,
    /// Worker concurrency.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Concurrent dispatchers.
    #[arg(long, default_value_t = 4)]
    dispatchers: usize,
    /// Runs per dispatch transaction (bulk dispatch).
    #[arg(long, default_value_t = 500)]
    batch: u64,
    /// Dispatch at this many runs per second instead of as fast as possible
    /// (to read queue latency below the maximum rate).
    #[arg(long)]
    rate: Option<u64>,
    /// Instead: time one reconcile pass over this many stale runs.
    #[arg(long)]
    stale: Option<u64>,
    /// Also push N bare apalis jobs on the same queue and print the ratio.
    #[arg(long)]
    baseline: bool,
    /// Instead: the same N runs through the run truth alone (dispatch,
    /// claim, reauthorize, finish in batches of --batch, --dispatchers at
    /// once), with no queue and no worker: the ceiling the truth sets.
    #[arg(long)]
    truth_only: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
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

#[derive(Debug, Subcommand)]
enum AccessCommand {
    /// Make the access tables equal to FILE (unlisted actors are disabled,
    /// workspaces suspended, environments offboarded; roles, memberships and
    /// connections are replaced).
    Apply {
        /// The access TOML file.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct DispatchArgs {
    /// The operation (as named in the config's catalog).
    operation: String,
    /// The workspace.
    #[arg(long)]
    workspace: String,
    /// The managed environment (for environment-scoped operations).
    #[arg(long)]
    environment: Option<String>,
    /// A target kind inside the scope.
    #[arg(long, requires = "target_id")]
    target_type: Option<String>,
    /// A target id inside the scope.
    #[arg(long, requires = "target_type")]
    target_id: Option<String>,
    /// The actor the run is started as (required). The run is authorized
    /// against the access truth now and again when it executes, so it needs
    /// an actor there: the CLI's local administrator (`user:local-admin`,
    /// what `runs list`, `runs show` and `reconcile` act as without --as) is
    /// none.
    #[arg(long = "as", value_name = "ACTOR")]
    actor: String,
    /// Parameters, a JSON object.
    #[arg(long, default_value = "{}")]
    params: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Runs, newest first.
    List(ListArgs),
    /// One run, with its guidance.
    Show(ShowArgs),
    /// Retry a blocked or failed run (a new run linked to it).
    Retry(ActArgs),
    /// Cancel a queued run, or ask a running one to stop.
    Cancel(ActArgs),
}

#[derive(Debug, Args)]
struct ActArgs {
    /// The run id.
    id: String,
    /// The operator acting (required: authorized against current access
    /// truth, where the CLI's local administrator, `user:local-admin`, is no
    /// actor).
    #[arg(long = "as", value_name = "ACTOR")]
    actor: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// queued, running or completed.
    #[arg(long)]
    status: Option<String>,
    /// pending, succeeded, partially_succeeded, failed, blocked or cancelled.
    #[arg(long)]
    outcome: Option<String>,
    /// One operation.
    #[arg(long)]
    operation: Option<String>,
    /// One workspace.
    #[arg(long)]
    workspace: Option<String>,
    /// Only what this actor may see. Without --as: every run, as the store's
    /// local administrator (`user:local-admin`: whoever can open the store
    /// holds every capability).
    #[arg(long = "as", value_name = "ACTOR")]
    actor: Option<String>,
    /// At most this many (1–1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// The run id.
    id: String,
    /// Show it as this actor sees it. Without --as: as the store's local
    /// administrator (`user:local-admin`), with every capability.
    #[arg(long = "as", value_name = "ACTOR")]
    actor: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReconcileArgs {
    /// Report what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only this operation.
    #[arg(long)]
    operation: Option<String>,
    /// Only this workspace.
    #[arg(long)]
    workspace: Option<String>,
    /// The on-call actor (needs `runs.reconcile`). Without --as the
    /// reconcile acts as the store's local administrator and its audit rows
    /// name `user:local-admin`.
    #[arg(long = "as", value_name = "ACTOR")]
    actor: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The bench prints its report on stdout; per-run log lines would be
    // measured too, so it logs warnings only unless RUST_LOG says otherwise.
    let default_filter = if matches!(cli.command, Command::Bench(_)) { "warn" } else { "info,sqlx=warn" };
    app::init_logging(&cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        // The reader of stdout went away: end quietly, as `head` expects.
        Ok(()) | Err(app::CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message());
            ExitCode::from(e.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
