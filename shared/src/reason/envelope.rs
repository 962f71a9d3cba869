//! A reason code translated for one viewer: the envelope, the next-step keys
//! and the capability each needs.

use serde::{Deserialize, Serialize};

use super::{ReasonCode, Remedy, Retryability};
use crate::viewer::{ACCESS_MANAGE, RUNS_RETRY, RUNS_VIEW, Viewer};

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
