//! The OperationRun record: the one truthful account of a run.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::counts::SummaryCounts;
use crate::lifecycle::{ActorKind, RunOutcome, RunStatus, SourceSurface};

/// Who started a run (or acted on it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Initiator {
    /// user, service or schedule.
    pub kind: ActorKind,
    /// The actor's id (for a schedule: the schedule's service actor).
    pub id: String,
}

impl Initiator {
    /// A person.
    pub fn user(id: impl Into<String>) -> Self {
        Self { kind: ActorKind::User, id: id.into() }
    }
    /// A machine identity.
    pub fn service(id: impl Into<String>) -> Self {
        Self { kind: ActorKind::Service, id: id.into() }
    }
    /// A schedule acting through its service actor.
    pub fn schedule(id: impl Into<String>) -> Self {
        Self { kind: ActorKind::Schedule, id: id.into() }
    }
}

/// One entry of a run's failure summary: a reason code and a sanitized,
/// bounded message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureEntry {
    /// A registered (or at least dotted) reason code.
    pub reason_code: String,
    /// A redacted message, at most [`crate::redact::MAX_MESSAGE_LEN`] bytes.
    pub message: String,
}

/// At most this many entries are kept in a failure summary.
pub const MAX_FAILURE_ENTRIES: usize = 10;

/// Longest id (workspace, environment, target, actor).
pub const MAX_ID_LEN: usize = 200;

/// The scope a run acts in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Scope {
    /// The workspace (tenant of the platform).
    pub workspace_id: String,
    /// The managed environment, for environment-scoped operations.
    pub environment_id: Option<String>,
    /// An optional target kind inside the scope.
    pub target_type: Option<String>,
    /// An optional target id inside the scope.
    pub target_id: Option<String>,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRun {
    /// UUID v7: sortable by creation.
    pub id: Uuid,
    /// The operation type, as named in the catalog.
    pub operation: String,
    /// The workspace.
    pub workspace_id: String,
    /// The managed environment, if any.
    pub environment_id: Option<String>,
    /// The target kind, if any.
    pub target_type: Option<String>,
    /// The target id, if any.
    pub target_id: Option<String>,
    /// Who started it.
    pub initiator: Initiator,
    /// Where it was started from.
    pub source_surface: SourceSurface,
    /// The dispatch context captured when it was started.
    pub context: serde_json::Value,
    /// The operation's parameters.
    pub params: serde_json::Value,
    /// At most one active run per dedup key.
    pub dedup_key: Option<String>,
    /// queued, running or completed.
    pub status: RunStatus,
    /// pending until completed.
    pub outcome: RunOutcome,
    /// Why it ended as it did (or was blocked).
    pub reason_code: Option<String>,
    /// Bounded, sanitized failures.
    pub failure_summary: Vec<FailureEntry>,
    /// Registered numeric counts.
    pub summary_counts: SummaryCounts,
    /// Where a resumed attempt continues.
    pub checkpoint: Option<serde_json::Value>,
    /// 1 for the first attempt; + 1 per retry later and per requeue.
    pub attempt: i32,
    /// Attempts allowed in all (retries over time and lost leases).
    pub max_attempts: i32,
    /// How often the run was snoozed (put back to wait without using an
    /// attempt).
    #[serde(default)]
    pub snoozes: i32,
    /// How many refused scheduled dispatches this blocked run stands for
    /// (one per tick while the refusal lasts; 0 for a run that was not refused).
    #[serde(default)]
    pub refusals: i32,
    /// The newest of those refusals.
    #[serde(default)]
    pub last_refused_at: Option<DateTime<Utc>>,
    /// The open refusal this run collapses (`schedule|workspace|environment`),
    /// cleared when the schedule fires there again or the run is retried.
    #[serde(default)]
    pub refusal_key: Option<String>,
    /// The run this one retries.
    pub retry_of: Option<Uuid>,
    /// The worker holding the lease while running.
    pub lease_owner: Option<String>,
    /// When the lease runs out unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The last heartbeat.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// Set when an operator asked a running run to stop.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// When it was (re)queued: the clock for never-started detection.
    pub queued_at: DateTime<Utc>,
    /// When a queued run may be claimed (at dispatch: now, or the time asked
    /// for with `--at`/`--in`).
    pub available_at: DateTime<Utc>,
    /// When the reconciler last pushed its job again.
    pub repushed_at: Option<DateTime<Utc>>,
    /// Written.
    pub created_at: DateTime<Utc>,
    /// First claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// Completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl OperationRun {
    /// The run's scope.
    pub fn scope(&self) -> Scope {
        Scope {
            workspace_id: self.workspace_id.clone(),
            environment_id: self.environment_id.clone(),
            target_type: self.target_type.clone(),
            target_id: self.target_id.clone(),
        }
    }
}
