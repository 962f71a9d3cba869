//! What the run store's reads take: which runs to list, which audit rows,
//! which stale candidates, and what a page of retention deleted.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::lifecycle::{RunOutcome, RunStatus};

/// Which runs to list. Every field narrows the list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunFilter {
    /// Only these workspaces (visibility); `Some(empty)` lists nothing.
    pub visible_workspaces: Option<Vec<String>>,
    /// One workspace.
    pub workspace_id: Option<String>,
    /// One operation.
    pub operation: Option<String>,
    /// One status.
    pub status: Option<RunStatus>,
    /// One outcome.
    pub outcome: Option<RunOutcome>,
    /// Runs that retry this one.
    pub retry_of: Option<Uuid>,
    /// Only queued runs still waiting at this instant (their `available_at`
    /// after it): delayed runs, retries waiting for their next attempt,
    /// snoozed runs.
    pub waiting_at: Option<DateTime<Utc>>,
    /// Only these workspaces (a second visibility bound, e.g. where an
    /// operator holds the capability an action needs); `Some(empty)` lists
    /// nothing.
    pub workspace_in: Option<Vec<String>>,
    /// One reason code.
    pub reason_code: Option<String>,
    /// One environment.
    pub environment_id: Option<String>,
    /// Runs dispatched by this schedule.
    pub schedule: Option<String>,
    /// Runs started by this actor (of this kind, when given).
    pub initiator: Option<InitiatorFilter>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Completed at or after (completed runs only).
    pub completed_after: Option<DateTime<Utc>>,
    /// Completed before (completed runs only).
    pub completed_before: Option<DateTime<Utc>>,
    /// Only runs no finished run retries (a retry by filter leaves those
    /// alone; a run whose retry is still active is listed).
    pub without_finished_retry: bool,
    /// Only runs no run retries at all (what still needs an operator).
    pub without_retry: bool,
    /// Only runs dispatched with this idempotency key (their context's
    /// `idempotency_key`).
    pub idempotency_key: Option<String>,
    /// Cursor: only runs older than this id (lists are newest first).
    pub before: Option<Uuid>,
    /// At most this many (the store caps it at 1,000).
    pub limit: u32,
}

/// Runs by who started them: `kind:id` (`user:ops-user-1`,
/// `schedule:svc-scheduler`) or an actor id of any kind.
#[derive(Debug, Clone, PartialEq)]
pub struct InitiatorFilter {
    /// The actor kind, when named.
    pub kind: Option<crate::lifecycle::ActorKind>,
    /// The actor id.
    pub id: String,
}

impl std::str::FromStr for InitiatorFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, id) = match s.split_once(':') {
            Some((k, id)) if matches!(k, "user" | "service" | "schedule") => {
                (Some(k.parse().map_err(|e| format!("{e}"))?), id)
            }
            _ => (None, s),
        };
        if id.trim().is_empty() || id.len() > crate::run::MAX_ID_LEN || id.chars().any(char::is_control) {
            return Err(format!(
                "'{}' is not an initiator (ACTOR or KIND:ACTOR, KIND user, service or schedule)",
                s.escape_debug()
            ));
        }
        Ok(Self { kind, id: id.to_string() })
    }
}

/// Which audit rows to read (`oprun audit`). Every field narrows the list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditFilter {
    /// Only rows of these workspaces; `Some(empty)` lists nothing.
    pub visible_workspaces: Option<Vec<String>>,
    /// With `visible_workspaces`: rows of no workspace too (administrative
    /// acts of the whole installation).
    pub include_unscoped: bool,
    /// One actor id.
    pub actor: Option<String>,
    /// One action (`schedule.pause`), or a prefix ending in `*` (`access.*`).
    pub action: Option<String>,
    /// Only rows of no run (administrative acts, refused actions).
    pub administrative: bool,
    /// One run's rows.
    pub run_id: Option<Uuid>,
    /// At or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Cursor: rows older than this id (newest first).
    pub before: Option<i64>,
    /// At most this many (capped at 1,000).
    pub limit: u32,
}

/// What one page of retention deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrunedPage {
    /// Runs deleted.
    pub runs: u64,
    /// Their audit rows, deleted with them.
    pub audit_rows: u64,
    /// Runs the page found (a run retried meanwhile is found, not deleted).
    pub found: u64,
    /// The newest completion time the page found: where the next page of
    /// the same pass starts.
    pub through: Option<DateTime<Utc>>,
}

/// Which stale candidates to scan.
#[derive(Debug, Clone, PartialEq)]
pub struct StaleQuery {
    /// `running` (lease expired before `cutoff`) or `queued` (queued before `cutoff`).
    pub status: RunStatus,
    /// The instant.
    pub cutoff: DateTime<Utc>,
    /// Only this operation.
    pub operation: Option<String>,
    /// Only this workspace.
    pub workspace_id: Option<String>,
    /// Only these workspaces (`Some(empty)`: none).
    pub within: Option<Vec<String>>,
    /// Cursor: ids after this one (ascending).
    pub after: Option<Uuid>,
    /// Page size.
    pub limit: u32,
}

/// How many runs of one workspace stand at one status and outcome
/// ([`super::RunStore::count_runs`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunCount {
    /// The workspace.
    pub workspace_id: String,
    /// The status.
    pub status: RunStatus,
    /// The outcome.
    pub outcome: RunOutcome,
    /// How many.
    pub count: u64,
}
