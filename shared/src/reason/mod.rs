//! Reason codes — stable dotted machine codes kept as they are for logs, audit
//! and tests (here) — what each means (`entries.rs`: label, explanation,
//! retryability, remedy) and the one translation that turns a code into an
//! envelope for one viewer, with one next step the viewer can actually take
//! (`envelope.rs`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::lifecycle::{ParseEnumError, text_enum};

mod entries;
mod envelope;
#[cfg(test)]
mod tests;

pub(crate) use entries::Remedy;
#[cfg(test)]
pub(crate) use envelope::UNRECOGNISED_LABEL;
pub use envelope::{
    Envelope, NextStep, STEP_CONTACT_ADMIN, STEP_ENABLE_ACTOR, STEP_GRANT_CAPABILITY, STEP_GRANT_PROVIDER_PERMISSION,
    STEP_REACTIVATE_WORKSPACE, STEP_RECONNECT_PROVIDER, STEP_RESTORE_ENVIRONMENT, STEP_RETRY, STEP_REVIEW_ACCESS,
    STEP_REVIEW_DETAILS, required_capability, translate,
};
pub(crate) use envelope::{ask_admin, step_for};

text_enum! {
    /// Why a run ended as it did (or was refused). Written by the service's
    /// named transitions (`block`, `expire`, `cancel`, …) and by handlers'
    /// completions; read back as text, translated by [`translate`].
    ReasonCode, "reason code" {
        /// Execution-time reauthorization: the actor that started the run no
        /// longer exists. Written by the worker's `block`.
        ExecutionActorUnknown => "execution.actor_unknown",
        /// Execution-time reauthorization: the initiating actor is disabled.
        /// Written by the worker's `block`.
        ExecutionActorDisabled => "execution.actor_disabled",
        /// Execution-time reauthorization (or a refused scheduled dispatch):
        /// the initiating actor no longer holds the operation's capability.
        ExecutionCapabilityMissing => "execution.capability_missing",
        /// Execution-time reauthorization: the workspace is suspended or
        /// archived.
        ExecutionWorkspaceInactive => "execution.workspace_inactive",
        /// Execution-time reauthorization: the target environment is disabled,
        /// onboarding or being removed.
        ExecutionEnvironmentNotOperable => "execution.environment_not_operable",
        /// Execution-time reauthorization: the run's environment or target
        /// moved out of its scope after dispatch.
        ExecutionScopeChanged => "execution.scope_changed",
        /// Execution-time check: the provider connection the run needs is
        /// missing, disabled or expired.
        ExecutionProviderConnectionUnusable => "execution.provider_connection_unusable",
        /// A handler's completion: the provider kept throttling (429) past the
        /// handler's patience.
        ProviderThrottled => "provider.throttled",
        /// A handler's completion: the provider answered 5xx or could not be
        /// reached.
        ProviderUnavailable => "provider.unavailable",
        /// A handler's completion: the provider did not answer in time.
        ProviderTimeout => "provider.timeout",
        /// A handler's completion: the provider rejected the connection's
        /// credentials (401).
        ProviderAuthFailed => "provider.auth_failed",
        /// A handler's block: the provider refused for lack of a permission
        /// (403).
        ProviderPermissionMissing => "provider.permission_missing",
        /// A handler's completion: the target does not exist at the provider
        /// (404).
        ProviderNotFound => "provider.not_found",
        /// A handler's completion: the provider's answer could not be
        /// understood.
        ProviderBadResponse => "provider.bad_response",
        /// A handler's completion: the provider refused a change made against
        /// a stale version (409/412).
        ProviderConflict => "provider.conflict",
        /// A failure entry of a partly succeeded collection: the provider
        /// marked items of a page failed (`item_failed`).
        ProviderItemFailed => "provider.item_failed",
        /// The worker: the run waits for its provider budget (every permit
        /// of its environment in use, or its rate spent) without holding a
        /// worker slot; it resumes by itself.
        ProviderBudgetFull => "provider.budget_full",
        /// The reconciler's `expire`: the worker stopped renewing its lease and
        /// no attempts were left.
        RunLeaseExpired => "run.lease_expired",
        /// The reconciler's `expire`: no worker claimed the queued run in time.
        RunNeverStarted => "run.never_started",
        /// `cancel` (and a cancel request honoured by the worker): an operator
        /// stopped the run.
        RunCancelledByOperator => "run.cancelled_by_operator",
        /// The worker: the run's parameters do not fit its operation.
        RunPayloadInvalid => "run.payload_invalid",
        /// The worker: this deployment's catalog does not know the run's
        /// operation.
        RunOperationUnknown => "run.operation_unknown",
        /// The worker: the handler panicked.
        RunHandlerPanicked => "run.handler_panicked",
        /// The worker: the run asked to be snoozed more often than its
        /// operation's retry policy allows (`retry.max_snoozes`).
        RunSnoozeLimit => "run.snooze_limit",
        /// Anything a handler could not classify.
        UnknownError => "unknown_error",
    }
}

/// Whether and how a run that ended for a reason may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retryability {
    /// The cause is usually temporary: retrying as it is may well succeed.
    RetryNow,
    /// Something has to be fixed first (access, a connection, a permission);
    /// then a retry may succeed.
    RetryAfterFix,
    /// Retrying the same run cannot help (bad parameters, a deliberate cancel,
    /// a target that is gone).
    NotRetryable,
}
