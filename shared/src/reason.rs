//! Reason codes — stable dotted machine codes kept as they are for logs, audit
//! and tests — and the one translation that turns a code into an envelope an
//! operator can act on: a label, an explanation, whether and how the run is
//! retryable, and one next step the viewer can actually take.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::lifecycle::{ParseEnumError, text_enum};
use crate::viewer::{ACCESS_MANAGE, RUNS_RETRY, RUNS_VIEW, Viewer};

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

/// The one thing the viewer should do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextStep {
    /// A stable key (`retry`, `grant_capability`, `contact_admin`, …); see
    /// [`required_capability`].
    pub key: String,
    /// What to do, in words.
    pub label: String,
}

/// A reason code translated for one viewer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Envelope {
    /// The code as given (raw, even when unknown).
    pub code: String,
    /// Whether the code is a [`ReasonCode`].
    pub known: bool,
    /// A short label.
    pub label: String,
    /// What happened, for an operator.
    pub explanation: String,
    /// Whether and how a retry may help.
    pub retryability: Retryability,
    /// The one next step; `None` exactly when `no_action_needed`.
    pub next_step: Option<NextStep>,
    /// Nothing needs doing; `true` exactly when `next_step` is `None`.
    pub no_action_needed: bool,
}

/// Next-step key: retry the run.
pub const STEP_RETRY: &str = "retry";
/// Next-step key: ask a workspace admin (needs no capability).
pub const STEP_CONTACT_ADMIN: &str = "contact_admin";
/// Next-step key: review the run's technical details.
pub const STEP_REVIEW_DETAILS: &str = "review_details";
/// Next-step key: grant the missing capability.
pub const STEP_GRANT_CAPABILITY: &str = "grant_capability";
/// Next-step key: re-enable the initiating actor.
pub const STEP_ENABLE_ACTOR: &str = "enable_actor";
/// Next-step key: review who may run the operation, and where.
pub const STEP_REVIEW_ACCESS: &str = "review_access";
/// Next-step key: reactivate the workspace.
pub const STEP_REACTIVATE_WORKSPACE: &str = "reactivate_workspace";
/// Next-step key: make the environment operable again.
pub const STEP_RESTORE_ENVIRONMENT: &str = "restore_environment";
/// Next-step key: repair or renew the provider connection.
pub const STEP_RECONNECT_PROVIDER: &str = "reconnect_provider";
/// Next-step key: grant the provider-side permission to the connection.
pub const STEP_GRANT_PROVIDER_PERMISSION: &str = "grant_provider_permission";

/// The capability a next step (or a guidance action) with this key needs:
/// access and connection remedies need [`ACCESS_MANAGE`], `retry` needs
/// [`RUNS_RETRY`] (and, for a guidance action, the operation's own capability),
/// `review_details` needs [`RUNS_VIEW`]; `contact_admin` and unknown keys need
/// none.
pub fn required_capability(key: &str) -> Option<&'static str> {
    match key {
        STEP_GRANT_CAPABILITY
        | STEP_ENABLE_ACTOR
        | STEP_REVIEW_ACCESS
        | STEP_REACTIVATE_WORKSPACE
        | STEP_RESTORE_ENVIRONMENT
        | STEP_RECONNECT_PROVIDER
        | STEP_GRANT_PROVIDER_PERMISSION => Some(ACCESS_MANAGE),
        STEP_RETRY => Some(RUNS_RETRY),
        STEP_REVIEW_DETAILS => Some(RUNS_VIEW),
        _ => None,
    }
}

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
struct Entry {
    label: &'static str,
    explanation: &'static str,
    retryability: Retryability,
    /// `None`: no action is needed.
    remedy: Option<Remedy>,
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

    fn entry(self) -> Entry {
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

/// The label of the readable fallback for a code that is not a [`ReasonCode`].
pub const UNRECOGNISED_LABEL: &str = "Unrecognised reason";

/// The next step for `remedy` as `viewer` may take it: the remedy itself when
/// the viewer holds what it needs, otherwise "Ask a workspace admin to …".
pub(crate) fn step_for(remedy: Remedy, viewer: &Viewer) -> NextStep {
    match required_capability(remedy.key) {
        Some(cap) if !viewer.can(cap) => ask_admin(remedy.ask),
        _ => NextStep { key: remedy.key.to_string(), label: remedy.label.to_string() },
    }
}

/// The `contact_admin` step asking a workspace admin to do `what`.
pub(crate) fn ask_admin(what: &str) -> NextStep {
    NextStep { key: STEP_CONTACT_ADMIN.to_string(), label: format!("Ask a workspace admin to {what}") }
}

/// Translate a reason code for `viewer`: label, explanation, retryability and
/// one next step the viewer can take (a remedy the viewer lacks the capability
/// for becomes "Ask a workspace admin to …"). A code that is not a
/// [`ReasonCode`] gets a readable fallback naming the raw code (redacted and
/// bounded in the explanation; `code` keeps it as given).
pub fn translate(code: &str, viewer: &Viewer) -> Envelope {
    let Ok(reason) = code.parse::<ReasonCode>() else {
        let remedy = Remedy {
            key: STEP_REVIEW_DETAILS,
            label: "Review the technical details",
            ask: "review this run's technical details",
        };
        return Envelope {
            code: code.to_string(),
            known: false,
            label: UNRECOGNISED_LABEL.to_string(),
            explanation: format!(
                "The run reported the reason code '{}', which this version of oprun does not recognise.",
                crate::redact::excerpt(code, 100)
            ),
            retryability: Retryability::RetryAfterFix,
            next_step: Some(step_for(remedy, viewer)),
            no_action_needed: false,
        };
    };
    let entry = reason.entry();
    let next_step = entry.remedy.map(|r| step_for(r, viewer));
    Envelope {
        code: code.to_string(),
        known: true,
        label: entry.label.to_string(),
        explanation: entry.explanation.to_string(),
        retryability: entry.retryability,
        no_action_needed: next_step.is_none(),
        next_step,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Viewer {
        Viewer::new("ada", ["runs.view", "runs.retry", "access.manage", "inventory.sync"])
    }

    fn plain() -> Viewer {
        Viewer::new("bob", ["runs.view"])
    }

    #[test]
    fn every_code_translates_for_an_admin_and_a_plain_viewer() {
        for &code in ReasonCode::ALL {
            for viewer in [admin(), plain()] {
                let env = translate(code.as_str(), &viewer);
                assert_eq!(env.code, code.as_str());
                assert!(env.known);
                assert!(!env.label.is_empty(), "{code}: empty label");
                assert!(!env.explanation.is_empty(), "{code}: empty explanation");
                assert_eq!(env.retryability, code.retryability());
                assert!(
                    env.next_step.is_some() != env.no_action_needed,
                    "{code}: exactly one of next step / no action"
                );
                if let Some(step) = &env.next_step {
                    assert!(!step.label.is_empty(), "{code}: empty step label");
                    if let Some(cap) = required_capability(&step.key) {
                        assert!(viewer.can(cap), "{code}: {} offered {} needing {cap}", viewer.actor_id, step.key);
                    }
                }
            }
        }
    }

    #[test]
    fn plain_viewer_is_sent_to_an_admin_for_access_remedies() {
        for code in [
            ReasonCode::ExecutionCapabilityMissing,
            ReasonCode::ExecutionActorDisabled,
            ReasonCode::ExecutionScopeChanged,
            ReasonCode::ProviderThrottled,
        ] {
            let step = translate(code.as_str(), &plain()).next_step.unwrap();
            assert_eq!(step.key, STEP_CONTACT_ADMIN, "{code}");
            assert!(step.label.starts_with("Ask a workspace admin to "), "{code}: {}", step.label);
            let step = translate(code.as_str(), &admin()).next_step.unwrap();
            assert_ne!(step.key, STEP_CONTACT_ADMIN, "{code}");
        }
        let step = translate("execution.capability_missing", &admin()).next_step.unwrap();
        assert_eq!(step.key, STEP_GRANT_CAPABILITY);
        let step = translate("provider.timeout", &admin()).next_step.unwrap();
        assert_eq!(step.key, STEP_RETRY);
    }

    #[test]
    fn cancelled_needs_no_action() {
        let env = translate("run.cancelled_by_operator", &admin());
        assert!(env.no_action_needed);
        assert_eq!(env.next_step, None);
        assert_eq!(env.retryability, Retryability::NotRetryable);
    }

    #[test]
    fn codes_round_trip_through_text() {
        for &code in ReasonCode::ALL {
            assert_eq!(code.as_str().parse::<ReasonCode>(), Ok(code));
            assert_eq!(code.to_string(), code.as_str());
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::json!(code.as_str()));
            assert_eq!(serde_json::from_value::<ReasonCode>(json).unwrap(), code);
        }
        assert_eq!(ReasonCode::ALL.len(), 23);
    }

    #[test]
    fn parsing_an_unknown_code_names_the_value() {
        let err = "provider.exploded".parse::<ReasonCode>().unwrap_err();
        assert_eq!(err.value, "provider.exploded");
        assert_eq!(err.kind, "reason code");
        assert!(err.to_string().contains("provider.exploded"), "{err}");
        assert!(err.to_string().contains("run.lease_expired"), "{err}");
    }

    #[test]
    fn unknown_code_gets_a_readable_fallback_carrying_the_raw_code() {
        for viewer in [admin(), plain(), Viewer::new("eve", Vec::<String>::new())] {
            let env = translate("vendor.quota_exceeded", &viewer);
            assert_eq!(env.code, "vendor.quota_exceeded");
            assert!(!env.known);
            assert_eq!(env.label, UNRECOGNISED_LABEL);
            assert!(env.explanation.contains("vendor.quota_exceeded"), "{}", env.explanation);
            assert_eq!(env.retryability, Retryability::RetryAfterFix);
            assert!(!env.no_action_needed);
            let step = env.next_step.unwrap();
            if viewer.can(RUNS_VIEW) {
                assert_eq!(step.key, STEP_REVIEW_DETAILS);
            } else {
                assert_eq!(step.key, STEP_CONTACT_ADMIN);
            }
        }
    }

    #[test]
    fn transient_codes_are_retryable_now() {
        for &code in ReasonCode::ALL {
            if code.is_transient() {
                assert_eq!(code.retryability(), Retryability::RetryNow, "{code}");
            }
        }
        assert!(ReasonCode::ProviderThrottled.is_transient());
        assert!(!ReasonCode::ProviderAuthFailed.is_transient());
    }

    #[test]
    fn retryability_serializes_in_snake_case() {
        assert_eq!(serde_json::to_value(Retryability::RetryAfterFix).unwrap(), serde_json::json!("retry_after_fix"));
        assert_eq!(serde_json::to_value(Retryability::RetryNow).unwrap(), serde_json::json!("retry_now"));
        assert_eq!(serde_json::to_value(Retryability::NotRetryable).unwrap(), serde_json::json!("not_retryable"));
    }
}
