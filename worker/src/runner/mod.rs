//! What a worker does with the runs it claims: claim ready runs from the run
//! store, reauthorize each against current truth, run its operation with a
//! heartbeat that renews the lease, and finish it through
//! `OperationRunService`.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use oprun_shared::catalog_defaults as defaults;
use oprun_shared::{
    AttemptEnd, Authorizer, Completion, Decision, Finish, Lease, OperationRun, OperationRunService, ReasonCode,
    RunOutcome, RunStatus, ServiceError, StoreError, Transition,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, info, warn};

use crate::budget::Budgets;
use crate::operation::{LeaseFlags, OperationError, Operations, RunContext};

mod batch;
mod stats;

use batch::{Batches, Decisions, FinishFailed, finish_loop};
pub use stats::{StatsSnapshot, WorkerStats};
use stats::{bump, bump_by};

/// A run this worker claimed, and what reauthorization said of it (`Err`:
/// access truth could not be read).
#[derive(Debug)]
pub struct ClaimedRun {
    run: Box<OperationRun>,
    decision: Result<Decision, Arc<StoreError>>,
}

/// What became of one job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobResult {
    /// The run ended (this worker wrote its terminal state).
    Finished(Box<OperationRun>),
    /// The run waits for a later attempt or a snooze (this worker put it
    /// back, queued until its `available_at`).
    Waiting(Box<OperationRun>),
    /// Another worker or the reconciler took the run mid-way.
    LeaseLost(uuid::Uuid),
}

/// The store failed: the claim should be tried again later.
#[derive(Debug, thiserror::Error)]
pub enum Retry {
    /// The claim's write failed.
    #[error("run store unavailable: {0}")]
    Store(#[source] Arc<ServiceError>),
}

/// The first and the longest wait between tries of a finish write that met
/// a store failure.
const FINISH_RETRY_MIN: Duration = Duration::from_millis(100);
const FINISH_RETRY_MAX: Duration = Duration::from_secs(5);

/// Handles jobs for one worker process.
#[derive(Debug, Clone)]
pub struct Runner {
    service: OperationRunService,
    authorizer: Authorizer,
    operations: Operations,
    worker_id: String,
    stats: Arc<WorkerStats>,
    batches: Arc<std::sync::OnceLock<Batches>>,
    /// The provider budgets its operations' requests take room in: claims
    /// leave alone the runs whose budget has no room now.
    budgets: Option<Budgets>,
}

impl Runner {
    /// A runner that claims leases as `worker_id` (unique per process).
    pub fn new(
        service: OperationRunService,
        authorizer: Authorizer,
        operations: Operations,
        worker_id: String,
    ) -> Self {
        Self {
            service,
            authorizer,
            operations,
            worker_id,
            stats: Arc::default(),
            batches: Arc::default(),
            budgets: None,
        }
    }

    /// Claim with `budgets` in mind: the runs of an operation whose
    /// provider budget for the run's environment has no room now (blocked
    /// by the provider, or found full a moment ago) are left for later, so
    /// one throttled tenant's backlog does not take the worker's slots.
    pub fn with_budgets(mut self, budgets: Budgets) -> Self {
        self.budgets = Some(budgets);
        self
    }

    /// The (environment, operation) pairs a claim leaves alone now.
    fn claim_skips(&self) -> Vec<(String, String)> {
        let Some(budgets) = &self.budgets else { return Vec::new() };
        let saturated = budgets.saturated();
        if saturated.is_empty() {
            return Vec::new();
        }
        let catalog = self.service.catalog();
        let mut skip = Vec::new();
        for key in saturated {
            for (op, spec) in &catalog.operations {
                if spec.provider.as_deref() == Some(key.provider.as_str()) {
                    skip.push((key.environment.clone(), op.clone()));
                }
            }
        }
        skip
    }

    /// The batchers, started on first use (on the caller's runtime); they
    /// stop when the last clone of this runner is dropped.
    fn batches(&self) -> &Batches {
        self.batches.get_or_init(|| {
            let (finishes, finish_rx) = mpsc::unbounded_channel();
            tokio::spawn(finish_loop(finish_rx, self.service.clone()));
            Batches { finishes }
        })
    }

    /// This worker's lease owner id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    /// Claim up to `limit` ready runs (fairly across scopes: `cursor`
    /// carries the round robin from one claim to the next) and reauthorize
    /// each against current truth.
    pub async fn claim_ready(&self, limit: u32, cursor: &mut Option<String>) -> Result<Vec<ClaimedRun>, Retry> {
        let skip = self.claim_skips();
        let runs = match self.service.claim_ready_skipping(&self.worker_id, limit, cursor, skip).await {
            Ok(runs) => runs,
            Err(e) => {
                bump(&self.stats.store_errors);
                return Err(Retry::Store(Arc::new(e)));
            }
        };
        bump_by(&self.stats.received, runs.len());
        let mut decided = Decisions::default();
        let mut out = Vec::with_capacity(runs.len());
        for run in runs {
            let decision = decided.reauthorize(&self.authorizer, &run).await;
            out.push(ClaimedRun { run: Box::new(run), decision });
        }
        Ok(out)
    }

    /// Run a claimed run to its end.
    pub async fn run_claimed(&self, claimed: ClaimedRun) -> JobResult {
        let ClaimedRun { run, decision } = claimed;
        let run = *run;
        if let Some(started) = run.started_at {
            let waited = (started - run.available_at.max(run.queued_at)).to_std().unwrap_or_default().as_secs_f64();
            metrics::histogram!("oprun_queue_latency_seconds", "operation" => run.operation.clone()).record(waited);
        }
        let leases = metrics::gauge!("oprun_active_leases");
        leases.increment(1.0);
        let result = self.execute(run, decision).await;
        leases.decrement(1.0);
        if let JobResult::Finished(run) = &result {
            metrics::counter!("oprun_runs_finished_total", "operation" => run.operation.clone(), "outcome" => run.outcome.as_str())
                .increment(1);
            if let (Some(a), Some(b)) = (run.started_at, run.completed_at) {
                let secs = (b - a).to_std().unwrap_or_default().as_secs_f64();
                metrics::histogram!("oprun_run_duration_seconds", "operation" => run.operation.clone()).record(secs);
            }
        }
        result
    }

    /// Reauthorize, run and finish a claimed run. Every path ends in a
    /// terminal write by this worker, or in a lost lease.
    async fn execute(&self, run: OperationRun, decision: Result<Decision, Arc<StoreError>>) -> JobResult {
        let span = tracing::info_span!(
            "run",
            run.id = %run.id,
            operation = %run.operation,
            workspace = %run.workspace_id,
            environment = run.environment_id.as_deref().unwrap_or("-"),
            attempt = run.attempt
        );
        self.execute_in_span(run, decision).instrument(span).await
    }

    async fn execute_in_span(&self, run: OperationRun, reauthorized: Result<Decision, Arc<StoreError>>) -> JobResult {
        let lease = Lease { run: run.id, worker: self.worker_id.clone(), attempt: run.attempt };
        let flags = Arc::new(LeaseFlags::default());
        // The lease is kept alive from the claim until the run is finished
        // (a finish that meets a store failure is retried under it).
        let every = self.service.spec(&run.operation).map_or_else(|_| defaults::heartbeat(), |s| s.heartbeat);
        let beat =
            tokio::spawn(heartbeat(lease.clone(), run.operation.clone(), flags.clone(), self.service.clone(), every));
        let result = self.execute_leased(run, reauthorized, &lease, &flags).await;
        beat.abort();
        result
    }

    async fn execute_leased(
        &self,
        run: OperationRun,
        reauthorized: Result<Decision, Arc<StoreError>>,
        lease: &Lease,
        flags: &Arc<LeaseFlags>,
    ) -> JobResult {
        let id = run.id;
        let spec = match self.service.spec(&run.operation) {
            Ok(spec) => spec.clone(),
            Err(_) => {
                let msg = format!("this deployment's catalog has no operation '{}'", run.operation);
                let done = Completion::failed(RunOutcome::Failed, ReasonCode::RunOperationUnknown, &msg);
                return self.finish(lease, Finish::Complete(done), flags).await;
            }
        };
        match reauthorized {
            Ok(Decision::Allowed) => {}
            Ok(Decision::Denied { reason, message }) => {
                metrics::counter!("oprun_execution_denials_total", "reason" => reason.as_str()).increment(1);
                info!(reason = %reason, "blocked at execution: {message}");
                let result = self.finish(lease, Finish::Block { reason, message }, flags).await;
                if matches!(result, JobResult::Finished(_)) {
                    bump(&self.stats.blocked);
                }
                return result;
            }
            Err(e) => {
                // We hold the lease: the reconciler requeues the run when it expires.
                bump(&self.stats.store_errors);
                warn!(error = %e, "reauthorization could not read access truth; the lease will expire");
                return JobResult::LeaseLost(id);
            }
        }
        let Some(op) = self.operations.for_operation(&run.operation, &spec) else {
            let kind = spec.kind.clone().unwrap_or_else(|| run.operation.clone());
            let msg = format!("this worker has no handler of kind '{kind}'");
            let done = Completion::failed(RunOutcome::Failed, ReasonCode::RunOperationUnknown, &msg);
            return self.finish(lease, Finish::Complete(done), flags).await;
        };
        if let Err(msg) = op.validate(&run.params, &spec) {
            let done = Completion::failed(RunOutcome::Failed, ReasonCode::RunPayloadInvalid, &msg);
            return self.finish(lease, Finish::Complete(done), flags).await;
        }
        let ctx = Arc::new(RunContext::new(run, spec, lease.clone(), self.service.clone(), flags.clone()));
        // The handler runs on its own task so that a panic ends this run, not the worker.
        let work = {
            let ctx = ctx.clone();
            tokio::spawn(async move { op.execute(&ctx).await })
        };
        let result = work.await;
        let end = match result {
            Ok(Ok(done)) => AttemptEnd::Completed(done),
            Ok(Err(OperationError::Failed { reason, message })) => {
                AttemptEnd::Completed(Completion::failed(RunOutcome::Failed, reason, &message))
            }
            Ok(Err(OperationError::Blocked { reason, message })) => {
                AttemptEnd::Completed(Completion::failed(RunOutcome::Blocked, reason, &message))
            }
            Ok(Err(OperationError::RetryAfter { reason, message, after })) => {
                AttemptEnd::RetryAfter { reason, message, after }
            }
            Ok(Err(OperationError::Snooze { at, message })) => AttemptEnd::Snooze { at, message },
            Ok(Err(OperationError::BudgetFull { message, after })) => {
                AttemptEnd::Wait { reason: ReasonCode::ProviderBudgetFull, message, after }
            }
            Ok(Err(OperationError::Cancelled)) => AttemptEnd::Completed(ctx.cancelled()),
            Ok(Err(OperationError::LeaseLost)) => {
                bump(&self.stats.leases_lost);
                warn!("lost the lease mid-run; another attempt owns the run now");
                return JobResult::LeaseLost(id);
            }
            Ok(Err(OperationError::Store(e))) => {
                bump(&self.stats.store_errors);
                warn!(error = %e, "the run store failed mid-run; the lease will expire");
                return JobResult::LeaseLost(id);
            }
            Err(join) => {
                bump(&self.stats.panics);
                let what = if join.is_panic() { "the handler panicked" } else { "the handler was aborted" };
                warn!("{what}; the run ends failed");
                AttemptEnd::Completed(Completion::failed(RunOutcome::Failed, ReasonCode::RunHandlerPanicked, what))
            }
        };
        if ctx.lease_lost() {
            bump(&self.stats.leases_lost);
            return JobResult::LeaseLost(id);
        }
        let finish = match self.service.plan_end(ctx.run(), end) {
            // A run an operator asked to stop does not wait for another try.
            Finish::Later(_) if ctx.cancel_requested() => Finish::Complete(ctx.cancelled()),
            finish => finish,
        };
        self.finish(lease, finish, flags).await
    }

    /// Write the run's end. A store failure is retried with backoff while
    /// the heartbeat keeps the lease alive, until the write is durable or
    /// the lease is lost: a result the provider already produced (a device
    /// wiped, a call made) is never left to be recorded as something else.
    async fn finish(&self, lease: &Lease, finish: Finish, flags: &LeaseFlags) -> JobResult {
        let id = lease.run;
        let (outcome, later) = match &finish {
            Finish::Complete(c) => (c.outcome, None),
            Finish::Block { .. } => (RunOutcome::Blocked, None),
            Finish::Later(l) => (RunOutcome::Pending, Some((l.transition, l.reason, l.at))),
        };
        let span = tracing::info_span!("finish", outcome = %outcome);
        let write_once = || async {
            let (tx, rx) = oneshot::channel();
            let stopped = || FinishFailed::Stopped;
            self.batches().finishes.send((lease.clone(), finish.clone(), tx)).map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())?
        };
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(FINISH_RETRY_MIN)
            .with_max_delay(FINISH_RETRY_MAX)
            .with_jitter()
            .without_max_times()
            .build();
        let mut failed_before = false;
        let written = async {
            loop {
                match write_once().await {
                    Err(e @ (FinishFailed::Store(_) | FinishFailed::Stopped)) if !flags.lost() => {
                        bump(&self.stats.store_errors);
                        let wait = delays.next().unwrap_or(FINISH_RETRY_MAX);
                        warn!(error = %e, retry_in = ?wait, "could not write the run's end; retrying while the lease is kept");
                        failed_before = true;
                        tokio::time::sleep(wait).await;
                    }
                    // A retried write whose first try did commit finds the
                    // run already completed: that is our own result.
                    Err(FinishFailed::Transition(t)) if failed_before => {
                        return match self.service.get(id).await {
                            Ok(run) if run.status == RunStatus::Completed => Ok(run),
                            _ => Err(FinishFailed::Transition(t)),
                        };
                    }
                    other => return other,
                }
            }
        }
        .instrument(span)
        .await;
        match written {
            Ok(run) if run.status == RunStatus::Queued => {
                let (transition, reason, at) = later.unwrap_or((Transition::RetryLater, None, run.available_at));
                let reason = reason.map_or("-", ReasonCode::as_str);
                if transition == Transition::Snooze {
                    bump(&self.stats.snoozed);
                    metrics::counter!("oprun_snoozes_total", "operation" => run.operation.clone()).increment(1);
                    info!(until = %at, reason, snoozes = run.snoozes, "run snoozed; it waits without a worker slot");
                } else {
                    bump(&self.stats.retries_scheduled);
                    metrics::counter!("oprun_retries_scheduled_total", "operation" => run.operation.clone(), "reason" => reason.to_string())
                        .increment(1);
                    info!(at = %at, reason, attempt = run.attempt, max_attempts = run.max_attempts, "attempt failed; retrying automatically");
                }
                JobResult::Waiting(Box::new(run))
            }
            Ok(run) => {
                bump(&self.stats.finished);
                info!(outcome = %run.outcome, reason = run.reason_code.as_deref().unwrap_or("-"), "run finished");
                JobResult::Finished(Box::new(run))
            }
            Err(e) => {
                match &e {
                    FinishFailed::Transition(_) => bump(&self.stats.leases_lost),
                    FinishFailed::Store(_) | FinishFailed::Stopped => bump(&self.stats.store_errors),
                }
                warn!(error = %e, "could not finish the run; its lease will expire and the reconciler moves it on");
                JobResult::LeaseLost(id)
            }
        }
    }
}

/// Renew the lease every `every` until aborted; note cancel requests and a
/// lost lease for the handler and the finish.
async fn heartbeat(
    lease: Lease,
    operation: String,
    flags: Arc<LeaseFlags>,
    service: OperationRunService,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the claim just set the lease
    loop {
        tick.tick().await;
        match service.heartbeat(&lease, &operation).await {
            Ok(state) => flags.note_cancel(state.cancel_requested),
            Err(ServiceError::Transition(_)) => {
                flags.note_lost();
                return;
            }
            Err(e) => warn!(run.id = %lease.run, error = %e, "heartbeat failed; retrying at the next beat"),
        }
    }
}
