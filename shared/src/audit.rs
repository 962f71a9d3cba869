//! The append-only audit log: one row per transition, refusal, denial,
//! operator action and reconciliation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::lifecycle::{RunOutcome, RunStatus};
use crate::run::{Initiator, OperationRun};

/// An audit row to write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who did it (a worker acts as a service actor named after itself).
    pub actor: Initiator,
    /// What was done (`run.claim`, `access.denied`, …).
    pub action: String,
    /// The run it concerns, if any.
    pub run_id: Option<Uuid>,
    /// The run's workspace.
    pub workspace_id: Option<String>,
    /// The run's environment.
    pub environment_id: Option<String>,
    /// Status before.
    pub from_status: Option<RunStatus>,
    /// Status after.
    pub to_status: Option<RunStatus>,
    /// Outcome after.
    pub outcome: Option<RunOutcome>,
    /// The reason code involved.
    pub reason_code: Option<String>,
    /// Anything else worth keeping (never a secret or a provider payload).
    pub details: serde_json::Value,
}

impl AuditEntry {
    /// An entry with no run attached yet.
    pub fn new(at: DateTime<Utc>, actor: Initiator, action: impl Into<String>) -> Self {
        Self {
            at,
            actor,
            action: action.into(),
            run_id: None,
            workspace_id: None,
            environment_id: None,
            from_status: None,
            to_status: None,
            outcome: None,
            reason_code: None,
            details: serde_json::Value::Object(Default::default()),
        }
    }

    /// This entry, filled in from the run as it is after the change.
    pub fn for_run(&self, run: &OperationRun) -> Self {
        self.for_written(
            run.id,
            run.workspace_id.clone(),
            run.environment_id.clone(),
            run.status,
            run.outcome,
            run.reason_code.clone(),
        )
    }

    /// This entry, filled in from what a write returned of a run: its id,
    /// scope, status and outcome after the change, and its reason code
    /// unless the entry names one.
    pub fn for_written(
        &self,
        run_id: Uuid,
        workspace_id: String,
        environment_id: Option<String>,
        status: RunStatus,
        outcome: RunOutcome,
        reason_code: Option<String>,
    ) -> Self {
        Self {
            run_id: Some(run_id),
            workspace_id: Some(workspace_id),
            environment_id,
            to_status: Some(status),
            outcome: Some(outcome),
            reason_code: self.reason_code.clone().or(reason_code),
            ..self.clone()
        }
    }

    /// Set the status the run left.
    pub fn from(mut self, status: RunStatus) -> Self {
        self.from_status = Some(status);
        self
    }

    /// Set the reason code.
    pub fn reason(mut self, code: impl Into<String>) -> Self {
        self.reason_code = Some(code.into());
        self
    }

    /// Set the details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// An audit row as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Insertion order.
    pub id: i64,
    /// The row.
    #[serde(flatten)]
    pub entry: AuditEntry,
}
