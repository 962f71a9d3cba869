//! Operations: the handlers that do a run's work, behind one trait. Built-in
//! kinds (`demo`, and the HTTP kinds) and custom Rust operations register the
//! same way, in an [`Operations`] registry keyed by handler kind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use oprun_shared::{
    Completion, Lease, OperationRun, OperationRunService, OperationSpec, ReasonCode, ServiceError, SummaryCounts,
    TransitionError,
};
use serde_json::Value;

/// Why an operation stopped without a completion of its own.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    /// The run ends `failed` with this reason.
    #[error("{reason}: {message}")]
    Failed {
        /// A reason code (`provider.*`, `run.payload_invalid`, …).
        reason: ReasonCode,
        /// What happened (sanitized before it is stored).
        message: String,
    },
    /// The run ends `blocked` (e.g. `provider.permission_missing`).
    #[error("{reason}: {message}")]
    Blocked {
        /// The reason.
        reason: ReasonCode,
        /// What happened.
        message: String,
    },
    /// The provider asked to be called again after `after`, longer than the
    /// in-attempt cap: the run is snoozed (it waits queued, holding no
    /// worker slot, using no attempt) while the retry policy allows, and
    /// fails with `reason` after.
    #[error("{reason}: {message} (asked to wait {}s)", after.as_secs())]
    RetryAfter {
        /// The provider's reason (`provider.throttled`, …).
        reason: ReasonCode,
        /// What happened.
        message: String,
        /// How long the provider asked to wait.
        after: std::time::Duration,
    },
    /// The run's provider budget has no room now (every permit of its
    /// environment in use, its rate spent): the run waits `after`, holding
    /// no worker slot, using no attempt and no snooze of its policy.
    #[error("{message} (waiting {}ms for the budget)", after.as_millis())]
    BudgetFull {
        /// What the budget said.
        message: String,
        /// How long to wait before trying again.
        after: std::time::Duration,
    },
    /// Run again at `at` without using an attempt (polling a long provider
    /// job, waiting for a tenant to finish onboarding): the run waits
    /// queued, holding no worker slot, up to `retry.max_snoozes` times;
    /// the stored checkpoint is kept for the next run.
    #[error("snoozed until {at}: {message}")]
    Snooze {
        /// When to run again.
        at: chrono::DateTime<chrono::Utc>,
        /// Why (shown to operators while it waits).
        message: String,
    },
    /// An operator's cancel request was seen mid-work: end the run cancelled.
    #[error("cancelled by an operator")]
    Cancelled,
    /// This worker no longer holds the run's lease: stop, write nothing more.
    #[error("the lease was lost")]
    LeaseLost,
    /// The run store failed while the operation reported progress.
    #[error("store: {0}")]
    Store(#[source] ServiceError),
}

impl OperationError {
    /// A failure with a reason code.
    pub fn failed(reason: ReasonCode, message: impl Into<String>) -> Self {
        OperationError::Failed { reason, message: message.into() }
    }

    /// Run again at `at`, using no attempt (see [`OperationError::Snooze`]).
    pub fn snooze_until(at: chrono::DateTime<chrono::Utc>, message: impl Into<String>) -> Self {
        OperationError::Snooze { at, message: message.into() }
    }

    /// The run's parameters do not fit the operation.
    pub fn payload_invalid(message: impl Into<String>) -> Self {
        Self::failed(ReasonCode::RunPayloadInvalid, message)
    }
}

impl From<ServiceError> for OperationError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Transition(TransitionError::LeaseLost { .. })
            | ServiceError::Transition(TransitionError::InvalidTransition { .. })
            | ServiceError::Transition(TransitionError::NotFound(_)) => OperationError::LeaseLost,
            other => OperationError::Store(other),
        }
    }
}

/// What a handler sees of its run, and how it reports.
#[derive(Debug)]
pub struct RunContext {
    run: OperationRun,
    spec: OperationSpec,
    lease: Lease,
    service: OperationRunService,
    flags: Arc<LeaseFlags>,
}

/// What the heartbeat and the handler's own writes learn of the lease: a
/// cancel request, and whether this attempt lost it.
#[derive(Debug, Default)]
pub(crate) struct LeaseFlags {
    cancel: AtomicBool,
    lost: AtomicBool,
}

impl LeaseFlags {
    pub(crate) fn note_cancel(&self, requested: bool) {
        if requested {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn note_lost(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }

    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl RunContext {
    pub(crate) fn new(
        run: OperationRun,
        spec: OperationSpec,
        lease: Lease,
        service: OperationRunService,
        flags: Arc<LeaseFlags>,
    ) -> Self {
        Self { run, spec, lease, service, flags }
    }

    /// The run as claimed (scope, initiator, params, attempt, checkpoint).
    pub fn run(&self) -> &OperationRun {
        &self.run
    }

    /// The operation's catalog entry (its `settings` table among others).
    pub fn spec(&self) -> &OperationSpec {
        &self.spec
    }

    /// The run's parameters.
    pub fn params(&self) -> &Value {
        &self.run.params
    }

    /// Where a resumed attempt continues (the last checkpoint stored), if the
    /// operation is resumable.
    pub fn checkpoint(&self) -> Option<&Value> {
        self.run.checkpoint.as_ref()
    }

    /// Whether an operator asked the run to stop (seen at the last heartbeat
    /// or progress write). Handlers check it between pages.
    pub fn cancel_requested(&self) -> bool {
        self.flags.cancel.load(Ordering::Relaxed)
    }

    /// Now, by the service's injected clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.service.clock().now()
    }

    /// Whether this attempt lost the lease (seen at the last heartbeat).
    pub fn lease_lost(&self) -> bool {
        self.flags.lost()
    }

    /// Add counts and store a checkpoint, renewing the lease. Returns
    /// `LeaseLost` if another worker (or the reconciler) took the run.
    pub async fn progress(&self, counts: SummaryCounts, checkpoint: Option<Value>) -> Result<(), OperationError> {
        if self.lease_lost() {
            return Err(OperationError::LeaseLost);
        }
        match self.service.progress(&self.lease, &self.run.operation, counts, checkpoint).await {
            Ok(state) => {
                self.flags.note_cancel(state.cancel_requested);
                Ok(())
            }
            Err(e) => {
                let e = OperationError::from(e);
                if matches!(e, OperationError::LeaseLost) {
                    self.flags.note_lost();
                }
                Err(e)
            }
        }
    }

    /// The completion for a run that honoured a cancel request, keeping what
    /// it counted so far.
    pub fn cancelled(&self) -> Completion {
        Completion {
            outcome: oprun_shared::RunOutcome::Cancelled,
            reason_code: Some(ReasonCode::RunCancelledByOperator),
            failures: vec![],
            counts: SummaryCounts::new(),
            checkpoint: None,
        }
    }
}

/// One kind of work. Implementations must be cancel-aware (check
/// [`RunContext::cancel_requested`] between units of work) and report counts
/// and checkpoints through [`RunContext::progress`].
#[async_trait]
pub trait Operation: Send + Sync + std::fmt::Debug + 'static {
    /// Check the run's parameters before any work (a bad one ends the run
    /// failed `run.payload_invalid`).
    fn validate(&self, _params: &Value, _spec: &OperationSpec) -> Result<(), String> {
        Ok(())
    }

    /// Do the run's work and say how it ended.
    async fn execute(&self, ctx: &RunContext) -> Result<Completion, OperationError>;
}

/// Handlers by kind.
#[derive(Debug, Clone, Default)]
pub struct Operations {
    kinds: BTreeMap<String, Arc<dyn Operation>>,
}

impl Operations {
    /// No handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in kinds (`demo`).
    pub fn builtin() -> Self {
        let mut ops = Self::new();
        ops.register(crate::demo::KIND, crate::demo::DemoCollection);
        ops
    }

    /// Register (or replace) the handler of `kind`. A custom Rust operation
    /// registers under its operation name, or under a kind that catalog
    /// entries name with `kind = "…"`.
    pub fn register(&mut self, kind: impl Into<String>, op: impl Operation) -> &mut Self {
        self.kinds.insert(kind.into(), Arc::new(op));
        self
    }

    /// The handler for an operation: its `kind`, else its own name.
    pub fn for_operation(&self, operation: &str, spec: &OperationSpec) -> Option<Arc<dyn Operation>> {
        self.kinds.get(spec.kind.as_deref().unwrap_or(operation)).cloned()
    }

    /// The kinds registered, in order.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    /// Every catalog operation has a handler here; else the first that has
    /// none, named with the kind it asks for and the kinds there are (a
    /// start-up error: a worker must not claim runs it cannot run).
    pub fn check(&self, catalog: &oprun_shared::Catalog) -> Result<(), String> {
        for (name, spec) in &catalog.operations {
            if self.for_operation(name, spec).is_none() {
                let kind = spec.kind.as_deref().unwrap_or(name);
                let known: Vec<&str> = self.kinds().collect();
                return Err(format!(
                    "operations.\"{name}\": handler kind '{kind}' is not known to this binary (it knows: {}); \
                     register it (oprun as a library) or fix `kind`",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }
}
