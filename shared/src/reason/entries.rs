//! What each reason code means before any viewer is considered: its label,
//! explanation, retryability and remedy (one table, [`ReasonCode::entry`]).

use super::{
    ReasonCode, Retryability, STEP_ENABLE_ACTOR, STEP_GRANT_CAPABILITY, STEP_GRANT_PROVIDER_PERMISSION,
    STEP_REACTIVATE_WORKSPACE, STEP_RECONNECT_PROVIDER, STEP_RESTORE_ENVIRONMENT, STEP_RETRY, STEP_REVIEW_ACCESS,
    STEP_REVIEW_DETAILS,
};

/// A remedy: what to do if the viewer can, and what to ask an admin otherwise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remedy {
    /// The next-step key.
    pub(crate) key: &'static str,
    /// The imperative label for a viewer who can do it.
    pub(crate) label: &'static str,
    /// What to ask a workspace admin to do (follows "Ask a workspace admin to ").
    pub(crate) ask: &'static str,
}

const RETRY: Remedy = Remedy { key: STEP_RETRY, label: "Retry the run", ask: "retry the run" };

/// Everything a code translates to, before the viewer is considered.
pub(super) struct Entry {
    pub(super) label: &'static str,
    pub(super) explanation: &'static str,
    pub(super) retryability: Retryability,
    /// `None`: no action is needed.
    pub(super) remedy: Option<Remedy>,
}

impl ReasonCode {
    /// Whether and how a run that ended for this reason may be retried.
    pub fn retryability(self) -> Retryability {
        self.entry().retryability
    }

    /// Whether the cause is usually temporary at the provider (throttled,
    /// unavailable, timed out).
    pub fn is_transient(self) -> bool {
        matches!(self, ReasonCode::ProviderThrottled | ReasonCode::ProviderUnavailable | ReasonCode::ProviderTimeout)
    }

    /// A short label for operators.
    pub fn label(self) -> &'static str {
        self.entry().label
    }

    /// The remedy, before the viewer is considered; `None` when no action is
    /// needed.
    pub(crate) fn remedy(self) -> Option<Remedy> {
        self.entry().remedy
    }

    pub(super) fn entry(self) -> Entry {
        use Retryability::{NotRetryable, RetryAfterFix, RetryNow};
        let e = |label, explanation, retryability, remedy| Entry { label, explanation, retryability, remedy };
        let r = |key, label, ask| Some(Remedy { key, label, ask });
        match self {
            ReasonCode::ExecutionActorUnknown => e(
                "Unknown actor",
                "The actor that started this run no longer exists, so the run was not allowed to execute. No work was done.",
                RetryAfterFix,
                r(
                    STEP_REVIEW_ACCESS,
                    "Review who may run this operation, then retry",
                    "review who may run this operation, then retry the run",
                ),
            ),
            ReasonCode::ExecutionActorDisabled => e(
                "Actor disabled",
                "The actor that started this run is disabled, so the run was not allowed to execute. No work was done.",
                RetryAfterFix,
                r(
                    STEP_ENABLE_ACTOR,
                    "Re-enable the actor that started this run, then retry",
                    "re-enable the actor that started this run, then retry the run",
                ),
            ),
            ReasonCode::ExecutionCapabilityMissing => e(
                "Missing capability",
                "The actor that started this run no longer holds a capability the operation requires, so the run \
                 was refused when it was about to execute. No work was done.",
                RetryAfterFix,
                r(
                    STEP_GRANT_CAPABILITY,
                    "Grant the missing capability, then retry",
                    "grant the missing capability, then retry the run",
                ),
            ),
            ReasonCode::ExecutionWorkspaceInactive => e(
                "Workspace inactive",
                "The workspace is suspended or archived, so its runs are not executed. No work was done.",
                RetryAfterFix,
                r(
                    STEP_REACTIVATE_WORKSPACE,
                    "Reactivate the workspace, then retry",
                    "reactivate the workspace, then retry the run",
                ),
            ),
            ReasonCode::ExecutionEnvironmentNotOperable => e(
                "Environment not operable",
                "The environment this run targets is not operable (disabled, still being onboarded or being \
                 removed), so the run did not execute. No work was done.",
                RetryAfterFix,
                r(
                    STEP_RESTORE_ENVIRONMENT,
                    "Make the environment operable again, then retry",
                    "make the environment operable again, then retry the run",
                ),
            ),
            ReasonCode::ExecutionScopeChanged => e(
                "Scope changed",
                "The run's environment or target moved out of its scope after the run was started, so it was \
                 refused. No work was done.",
                RetryAfterFix,
                r(
                    STEP_REVIEW_ACCESS,
                    "Review the run's scope and access, then retry",
                    "review the run's scope and access, then retry the run",
                ),
            ),
            ReasonCode::ExecutionProviderConnectionUnusable => e(
                "Provider connection unusable",
                "The connection to the provider that this run needs is missing, disabled or expired, so the run \
                 did not execute. No work was done.",
                RetryAfterFix,
                r(
                    STEP_RECONNECT_PROVIDER,
                    "Repair the provider connection, then retry",
                    "repair the provider connection, then retry the run",
                ),
            ),
            ReasonCode::ProviderThrottled => e(
                "Provider throttled",
                "The provider asked oprun to slow down and kept doing so until the run gave up. This is usually \
                 temporary.",
                RetryNow,
                Some(RETRY),
            ),
            ReasonCode::ProviderBudgetFull => e(
                "Waiting for the provider budget",
                "Other runs are using every request this environment may have in flight at the provider (or its \
                 request rate is spent), so this run waits without holding a worker slot and resumes by itself.",
                RetryNow,
                None,
            ),
            ReasonCode::ProviderUnavailable => e(
                "Provider unavailable",
                "The provider could not be reached or answered with a server error. This is usually temporary.",
                RetryNow,
                Some(RETRY),
            ),
            ReasonCode::ProviderTimeout => e(
                "Provider timed out",
                "The provider did not answer in time. This is usually temporary.",
                RetryNow,
                Some(RETRY),
            ),
            ReasonCode::ProviderAuthFailed => e(
                "Provider sign-in failed",
                "The provider rejected the connection's credentials; they may have expired or been revoked.",
                RetryAfterFix,
                r(
                    STEP_RECONNECT_PROVIDER,
                    "Renew the provider connection's credentials, then retry",
                    "renew the provider connection's credentials, then retry the run",
                ),
            ),
            ReasonCode::ProviderPermissionMissing => e(
                "Provider permission missing",
                "The provider refused the request because the connection lacks a permission the operation needs.",
                RetryAfterFix,
                r(
                    STEP_GRANT_PROVIDER_PERMISSION,
                    "Grant the missing permission to the provider connection, then retry",
                    "grant the missing permission to the provider connection, then retry the run",
                ),
            ),
            ReasonCode::ProviderNotFound => e(
                "Not found at the provider",
                "The provider reported that the target does not exist; it may have been deleted or renamed. \
                 Retrying the same run would fail again.",
                NotRetryable,
                r(
                    STEP_REVIEW_DETAILS,
                    "Check that the target still exists, then start a new run",
                    "check that the run's target still exists",
                ),
            ),
            ReasonCode::ProviderBadResponse => e(
                "Unexpected provider response",
                "The provider answered with something oprun could not understand.",
                RetryAfterFix,
                r(
                    STEP_REVIEW_DETAILS,
                    "Review the technical details before retrying",
                    "review this run's technical details before it is retried",
                ),
            ),
            ReasonCode::ProviderConflict => e(
                "Provider conflict",
                "The provider refused a change because the target changed at the same time. A retry reads the \
                 current state again.",
                RetryNow,
                Some(RETRY),
            ),
            ReasonCode::ProviderItemFailed => e(
                "Items failed at the provider",
                "The provider marked some of the items it returned as failed; the rest of the work was done and \
                 the failed items are counted.",
                RetryAfterFix,
                r(
                    STEP_REVIEW_DETAILS,
                    "Review the failed items before retrying",
                    "review this run's failed items before it is retried",
                ),
            ),
            ReasonCode::RunLeaseExpired => e(
                "Worker lost",
                "The worker running this job stopped renewing its lease (it crashed, was shut down or lost its \
                 connection) and no attempts were left.",
                RetryNow,
                Some(RETRY),
            ),
            ReasonCode::RunNeverStarted => e(
                "Never started",
                "No worker picked this run up in time, so it was ended without doing any work.",
                RetryNow,
                r(
                    STEP_RETRY,
                    "Retry the run once workers are running",
                    "check that workers are running, then retry the run",
                ),
            ),
            ReasonCode::RunCancelledByOperator => {
                e("Cancelled", "An operator cancelled this run before it finished.", NotRetryable, None)
            }
            ReasonCode::RunPayloadInvalid => e(
                "Invalid parameters",
                "The operation refused the run's parameters; retrying with the same parameters would fail again.",
                NotRetryable,
                r(
                    STEP_REVIEW_DETAILS,
                    "Review the parameters and start a corrected run",
                    "review this run's parameters and start a corrected run",
                ),
            ),
            ReasonCode::RunOperationUnknown => e(
                "Unknown operation",
                "This deployment does not know the run's operation (it was removed or renamed), so the run could \
                 not execute.",
                NotRetryable,
                r(
                    STEP_REVIEW_DETAILS,
                    "Review the technical details and the deployment's operation catalog",
                    "check the deployment's operation catalog",
                ),
            ),
            ReasonCode::RunSnoozeLimit => e(
                "Snoozed too often",
                "The operation asked to wait and run again more times than its retry policy allows, so the \
                 run was ended instead of waiting once more.",
                RetryNow,
                r(
                    STEP_REVIEW_DETAILS,
                    "Review why the operation kept waiting, then retry the run",
                    "review why this run kept waiting and retry it",
                ),
            ),
            ReasonCode::RunHandlerPanicked => e(
                "Operation crashed",
                "The operation's code failed unexpectedly. This is a defect in the operation, not a problem with \
                 your data or access.",
                RetryAfterFix,
                r(
                    STEP_REVIEW_DETAILS,
                    "Review the technical details and report the defect",
                    "review this run's technical details and report the defect",
                ),
            ),
            ReasonCode::UnknownError => e(
                "Unexpected error",
                "The run failed with an error oprun could not classify.",
                RetryAfterFix,
                r(
                    STEP_REVIEW_DETAILS,
                    "Review the technical details before retrying",
                    "review this run's technical details before it is retried",
                ),
            ),
        }
    }
}
