//! The queue is the run store: a run row is its own job. Dispatch writes the
//! run queued and wakes the workers; a worker claims batches of ready runs
//! straight from `operation_runs` (round-robin across scopes, `SKIP LOCKED`
//! on Postgres, under the write lock on SQLite: see
//! `RunStore::claim_ready`), runs each on a task of its own, and finishes it
//! through `OperationRunService`. There is no second copy of a run to lose,
//! re-push or vacuum.
//!
//! How a worker waits and claims:
//! - It claims only when it has free slots, as many runs as it has free
//!   (at most [`MAX_CLAIM`]): a claimed run starts at once, never waits in a
//!   buffer with its lease running.
//! - With runs in flight and only a few slots free, it gathers slots for up
//!   to [`CLAIM_COOLDOWN`] before claiming, so that a busy worker claims in
//!   batches, not one transaction per finished run.
//! - Idle, it waits for a wake-up (a dispatch or requeue in this process;
//!   on Postgres, `NOTIFY` from any process) or `poll_interval` at most.
//! - On shutdown it claims no more and lets in-flight runs finish for up to
//!   `shutdown_grace`; runs still going then keep their lease until it
//!   expires and the reconciler moves them on.
//!
//! apalis is not the runtime here: its backends fetch jobs into a stream
//! that the worker drains as it likes, so a claim (which starts the lease
//! and writes the audit row) cannot be tied to a free slot, and a claimed
//! run would wait in apalis's buffer. The loop below is the part of apalis
//! this needs (slots, wake-ups, graceful stop), over the run store's claim.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oprun_shared::{Clock, JobQueue, QueueError, RunStore};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::QueueConfig;
use crate::runner::Runner;

/// The most runs one claim takes.
pub const MAX_CLAIM: usize = 256;

/// How long a busy worker gathers free slots before it claims.
pub const CLAIM_COOLDOWN: Duration = Duration::from_millis(5);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Prefix of the worker's name in logs.
    pub name_prefix: String,
    /// Runs handled at once.
    pub concurrency: usize,
    /// How long in-flight runs may finish after shutdown is asked.
    pub shutdown_grace: Duration,
}

/// The queue over a run store: what dispatch pushes (a wake-up: the run
/// row is already the job) and what a worker's loop claims from.
#[derive(Debug, Clone)]
pub struct Queue {
    store: Arc<dyn RunStore>,
    clock: Arc<dyn Clock>,
}

impl Queue {
    /// The queue of `store`; `clock` says which runs are ready (their
    /// `available_at` come).
    pub fn new(store: Arc<dyn RunStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }
}

#[async_trait]
impl JobQueue for Queue {
    /// The run is already queued in its row: wake the workers.
    async fn push(&self, _run_id: Uuid) -> Result<(), QueueError> {
        self.store.wake_workers().await.map_err(|e| QueueError(e.to_string()))
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.store.ping().await.map_err(|e| QueueError(e.to_string()))
    }

    /// Runs ready and not yet claimed.
    async fn depth(&self) -> Result<Option<u64>, QueueError> {
        self.store.count_ready(self.clock.now()).await.map(Some).map_err(|e| QueueError(e.to_string()))
    }

    /// One wake-up for them all.
    async fn push_many(&self, run_ids: &[Uuid]) -> Result<(), QueueError> {
        if run_ids.is_empty() {
            return Ok(());
        }
        self.store.wake_workers().await.map_err(|e| QueueError(e.to_string()))
    }
}

/// A unique worker name: `PREFIX-HOST-PID-RANDOM`.
pub fn unique_name(prefix: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let random = Uuid::now_v7().simple().to_string();
    format!("{prefix}-{host}-{}-{}", std::process::id(), &random[random.len() - 10..])
}

/// Run a worker until `shutdown` resolves, then let in-flight runs finish
/// for up to `opts.shutdown_grace`.
pub async fn run_worker(
    queue: Queue,
    cfg: QueueConfig,
    opts: WorkerOptions,
    runner: Arc<Runner>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let name = unique_name(&opts.name_prefix);
    let concurrency = opts.concurrency.max(1);
    let mut wake = queue.store.wakeups().await.map_err(|e| anyhow::anyhow!("worker {name}: {e}"))?;
    info!(worker = %name, lease_owner = %runner.worker_id(), concurrency, "worker started");
    let slots = Arc::new(Semaphore::new(concurrency));
    let gather = (concurrency / 4).clamp(1, MAX_CLAIM);
    let mut running: JoinSet<()> = JoinSet::new();
    let mut cursor: Option<String> = None;
    tokio::pin!(shutdown);
    loop {
        while running.try_join_next().is_some() {}
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p?,
            () = &mut shutdown => break,
        };
        let mut held = first;
        if held.num_permits() + slots.available_permits() < gather && !running.is_empty() {
            // Busy: gather a few slots, so that claims come in batches.
            let want = u32::try_from(gather - held.num_permits()).unwrap_or(u32::MAX);
            if let Ok(Ok(more)) = tokio::time::timeout(CLAIM_COOLDOWN, slots.clone().acquire_many_owned(want)).await {
                held.merge(more);
            }
        }
        // Every slot still free joins the claim.
        let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
        if let Ok(rest) = slots.clone().try_acquire_many_owned(free) {
            held.merge(rest);
        }
        let asked = held.num_permits().min(MAX_CLAIM);
        wake.arm();
        // A claim is never abandoned half-way (its runs would be leased to
        // no one): shutdown is looked at between claims only.
        let claimed = match runner.claim_ready(u32::try_from(asked).unwrap_or(u32::MAX), &mut cursor).await {
            Ok(claimed) => claimed,
            Err(e) => {
                warn!(worker = %name, error = %e, "could not claim; trying again after the poll interval");
                drop(held);
                tokio::select! {
                    () = tokio::time::sleep(cfg.poll_interval) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let got = claimed.len();
        for run in claimed {
            // One slot a run, released when it ends; the slots no run took
            // are released with `held`.
            let permit = held.split(1);
            let runner = runner.clone();
            running.spawn(async move {
                runner.run_claimed(run).await;
                drop(permit);
            });
        }
        drop(held);
        if got < asked {
            // Nothing more is ready: wait for a wake-up or the poll.
            tokio::select! {
                () = wake.wait(cfg.poll_interval) => {}
                () = &mut shutdown => break,
            }
        }
    }
    info!(worker = %name, in_flight = running.len(), "worker stopping: no more claims");
    let drain = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(opts.shutdown_grace, drain).await.is_err() {
        warn!(worker = %name, "shutdown grace elapsed with runs in flight; their leases will expire");
    }
    info!(worker = %name, "worker stopped");
    Ok(())
}
