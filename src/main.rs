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

use clap::{Parser, Subcommand};

/// A durable workflow worker with a job queue: every run knows who started
/// it and for which tenant, is authorized again when it executes, and ends in
/// one truthful record.
#[derive(Debug, Parser)]
#[command(name = "oprun", version)]
struct Cli {
    /// The config file (default: the bundled demo on ./oprun.db).
    #[arg(long, short, global = true, env = oprun::config::CONFIG_VAR)]
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
    Access(commands::access::AccessCommand),
    /// Start a run by hand.
    Dispatch(commands::dispatch::DispatchArgs),
    /// Runs.
    #[command(subcommand)]
    Runs(commands::runs::RunsCommand),
    /// Move stale runs on now (what the automatic reconciler does).
    Reconcile(commands::reconcile::ReconcileArgs),
    /// Delete what the `[retention]` windows no longer keep (one pass).
    Prune(commands::prune::PruneArgs),
    /// The audit log, newest first.
    Audit(commands::audit::AuditArgs),
    /// Schedules at run time: list, show, pause, resume, backfill.
    #[command(subcommand)]
    Schedules(commands::schedules::SchedulesCommand),
    /// Measure the real path: N runs dispatched, claimed, reauthorized,
    /// completed and audited (needs a scratch store).
    Bench(bench::BenchArgs),
    /// API bearer tokens (stored hashed; printed once).
    #[command(subcommand)]
    Token(commands::tokens::TokenCommand),
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
