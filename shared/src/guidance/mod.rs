//! Guidance: what one run means for one viewer, derived on read and never
//! stored. A run becomes a [`ResolutionCase`]: a title, the reason (from
//! [`translate`]), the impact, exactly one primary action the viewer can take,
//! optional secondary actions, the records it rests on and the raw technical
//! details. It is authorization-safe: every action's capability is held by the
//! viewer (a remedy the viewer cannot perform becomes "Ask a workspace admin
//! to …"), and it names nothing but the run, its scope and the chain ids the
//! caller passes in (already filtered to what the viewer may see).
//!
//! The envelope is the resolution-case contract every surface carries (API,
//! CLI `--json`, the dashboard): a stable case `key` naming the kind of case
//! (`operation_run.blocked.environment_not_operable`), the `scope` with its
//! `type`, the run's `source_surface`, and actions that say where they lead
//! (`url`, `method`), whether they need a confirmation, the audit event they
//! leave and, for one that starts a run, its `operation_run_type`.

use serde::Serialize;
use uuid::Uuid;

use crate::lifecycle::{RunOutcome, RunStatus, SourceSurface};
use crate::reason::{self, NextStep, Retryability, STEP_CONTACT_ADMIN, STEP_RETRY};
use crate::viewer::RUNS_RETRY;

mod derive;
#[cfg(test)]
mod tests;

pub use derive::guidance;

/// What the caller knows about a run beyond the run itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuidanceContext {
    /// The capability the run's operation requires (from the catalog).
    pub operation_capability: Option<String>,
    /// Whether the catalog lets operators retry the operation.
    pub retryable_by_operators: bool,
    /// Earlier runs this run retries, visible to the viewer, oldest first.
    pub retry_chain: Vec<Uuid>,
    /// A newer (active) run retrying this one, if the viewer may see it.
    pub retried_by: Option<Uuid>,
    /// The instant the case is made at.
    pub now: chrono::DateTime<chrono::Utc>,
    /// How long a run of this operation may wait queued before the wait
    /// is worth a look (the catalog's `queued_stale_after`).
    pub queued_stale_after: std::time::Duration,
    /// For a run refused at dispatch or execution (`execution.*`): the same
    /// check against current access truth passes now (someone fixed the
    /// cause), so a retry is what is left to do.
    pub cause_cleared: bool,
}

/// How urgent a case is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Nothing was done and nothing will be until someone acts.
    Critical,
    /// Something needs a look, or a retry will probably do.
    Warning,
    /// For information.
    Info,
    /// Done.
    Success,
}

/// Where a case stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    /// The run failed; the primary action is what to do about it.
    ActionRequired,
    /// The run was refused (authorization, access, a permission); no work ran.
    Blocked,
    /// The run finished with part of its work failed.
    NeedsReview,
    /// Nothing to do: the run is queued or running, was cancelled, or a newer
    /// run retries it.
    Informational,
    /// The run succeeded.
    Resolved,
    /// The run ended for a reason this version does not recognise (or is in a
    /// state it should never be in).
    Unknown,
}

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Go somewhere: a record, access management, technical details.
    Navigation,
    /// Retry the run (a new run, `retry_of` this one).
    Retry,
    /// Ask a workspace admin; needs no capability.
    ContactAdmin,
    /// Cancel the run.
    Cancel,
    /// Nothing to do.
    None,
}

/// One thing the viewer can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// A stable key (`retry`, `grant_capability`, `contact_admin`, `view_retry`, `none`, …).
    pub key: String,
    /// What to do, in words.
    pub label: String,
    /// What kind of action it is.
    pub kind: ActionKind,
    /// The capability it needs; always one the viewer holds.
    pub requires_capability: Option<String>,
    /// Where it leads: the API path that performs it (`POST
    /// /v1/runs/{id}/retry`) or a deep link into the dashboard (`/ui/runs/{id}`);
    /// `null` for an action no surface performs (ask an admin, change the
    /// access file).
    pub url: Option<String>,
    /// The HTTP method of `url` (`POST` performs, `GET` navigates).
    pub method: Option<String>,
    /// Whether a surface asks before taking it (it changes a run).
    pub requires_confirmation: bool,
    /// The audit action the act records (`run.retry`, `run.cancel`, …).
    pub audit_event: Option<String>,
    /// For an action that starts a run: the operation of the run it starts.
    pub operation_run_type: Option<String>,
}

/// Action key: follow the newer run that retries this one.
pub const ACTION_VIEW_RETRY: &str = "view_retry";
/// Action key: a run waiting for its next attempt (or snoozed) is made
/// ready now (`oprun runs retry`, `POST /v1/runs/{id}/retry`).
pub const ACTION_RETRY_NOW: &str = "retry_now";
/// Action key: cancel the run.
pub const ACTION_CANCEL: &str = "cancel";
/// Action key: nothing to do.
pub const ACTION_NONE: &str = "none";

impl Action {
    /// An action that leads nowhere yet ([`derive`] fills `url` and the rest
    /// from its key).
    fn new(key: &str, label: impl Into<String>, kind: ActionKind, requires_capability: Option<&str>) -> Self {
        Self {
            key: key.into(),
            label: label.into(),
            kind,
            requires_capability: requires_capability.map(str::to_string),
            url: None,
            method: None,
            requires_confirmation: false,
            audit_event: None,
            operation_run_type: None,
        }
    }

    /// Nothing to do, with a label saying why.
    fn none(label: impl Into<String>) -> Self {
        Self::new(ACTION_NONE, label, ActionKind::None, None)
    }

    /// A translated next step as an action.
    fn from_step(step: NextStep) -> Self {
        let kind = match step.key.as_str() {
            STEP_CONTACT_ADMIN => ActionKind::ContactAdmin,
            STEP_RETRY => ActionKind::Retry,
            _ => ActionKind::Navigation,
        };
        Self::new(&step.key, step.label, kind, reason::required_capability(&step.key))
    }

    /// Retry the run.
    fn retry(label: &str) -> Self {
        Self::new(STEP_RETRY, label, ActionKind::Retry, Some(RUNS_RETRY))
    }
}

/// What kind of scope a case belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeType {
    /// A run of a whole workspace.
    Workspace,
    /// A run of one managed environment of a workspace.
    Environment,
}

/// The scope a case belongs to (the run's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseScope {
    /// `environment` when the run targets one, else `workspace`.
    #[serde(rename = "type")]
    pub scope_type: ScopeType,
    /// The run's workspace.
    pub workspace_id: String,
    /// The run's environment, if any.
    pub environment_id: Option<String>,
    /// The run's operation.
    pub operation: String,
}

/// How a referenced run relates to the case's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceRelation {
    /// The run itself.
    This,
    /// An earlier run this one retries.
    RetryOf,
    /// A newer run retrying this one.
    RetriedBy,
}

/// The `kind` of every source reference: an OperationRun.
pub const SOURCE_KIND_RUN: &str = "operation_run";

/// A record the case rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceRef {
    /// Always [`SOURCE_KIND_RUN`].
    pub kind: String,
    /// The run's id.
    pub id: Uuid,
    /// How it relates to the case's run.
    pub relation: SourceRelation,
}

impl SourceRef {
    fn run(id: Uuid, relation: SourceRelation) -> Self {
        Self { kind: SOURCE_KIND_RUN.into(), id, relation }
    }
}

/// The raw facts behind a case, for the technically minded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TechnicalDetails {
    /// The run's reason code exactly as stored.
    pub reason_code: Option<String>,
    /// How the reason code translates for retries, when there is one.
    pub retryability: Option<Retryability>,
    /// The operation type.
    pub operation: String,
    /// The attempt number.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The run's status.
    pub status: RunStatus,
    /// The run's outcome.
    pub outcome: RunOutcome,
    /// The worker holding the lease, while running.
    pub lease_owner: Option<String>,
}

/// What one run means for one viewer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolutionCase {
    /// The kind of case, stable across runs:
    /// `operation_run.<status>.<what>`, where `<what>` is the reason code's
    /// last segment (`operation_run.blocked.environment_not_operable`) or,
    /// without one, where the run stands (`operation_run.resolved.succeeded`,
    /// `operation_run.informational.queued`).
    pub key: String,
    /// The run the case is about (also the `this` source ref).
    pub run_id: Uuid,
    /// The run's scope.
    pub scope: CaseScope,
    /// Where the run was started (`scheduler`, `cli`, `api`, `retry`, …).
    pub source_surface: SourceSurface,
    /// How urgent it is.
    pub severity: Severity,
    /// Where it stands.
    pub status: CaseStatus,
    /// A one-line title.
    pub title: String,
    /// Why the run is where it is.
    pub reason: String,
    /// What it means for the work.
    pub impact: String,
    /// The one thing to do next (possibly "nothing").
    pub primary_action: Action,
    /// Other things the viewer can do.
    pub secondary_actions: Vec<Action>,
    /// The run, its visible retry chain and its visible newer retry.
    pub source_refs: Vec<SourceRef>,
    /// The raw facts, including the reason code as stored.
    pub technical_details: TechnicalDetails,
}
