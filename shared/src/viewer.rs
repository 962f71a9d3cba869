//! Who is looking at (or acting on) a run, and what they may do in its
//! workspace right now.

use std::collections::BTreeSet;

/// Capability to see runs of a workspace.
pub const RUNS_VIEW: &str = "runs.view";
/// Capability to retry runs of a workspace (plus the operation's own capability).
pub const RUNS_RETRY: &str = "runs.retry";
/// Capability to cancel runs of a workspace.
pub const RUNS_CANCEL: &str = "runs.cancel";
/// Capability to reconcile stale runs.
pub const RUNS_RECONCILE: &str = "runs.reconcile";
/// Capability to change who may do what in a workspace (a workspace admin).
pub const ACCESS_MANAGE: &str = "access.manage";
/// Capability to read `/metrics`. Its labels name every workspace's
/// schedules and operations, so a scrape needs it in every active workspace.
pub const METRICS_VIEW: &str = "metrics.view";

/// Capability to pause, resume and backfill the schedules of a workspace.
pub const SCHEDULES_MANAGE: &str = "schedules.manage";
/// Capability to read a workspace's audit log of administrative acts.
pub const AUDIT_VIEW: &str = "audit.view";

/// The capabilities oprun itself defines; operation capabilities come from
/// the operation catalog.
pub const BUILTIN_CAPABILITIES: &[&str] =
    &[RUNS_VIEW, RUNS_RETRY, RUNS_CANCEL, RUNS_RECONCILE, ACCESS_MANAGE, METRICS_VIEW, SCHEDULES_MANAGE, AUDIT_VIEW];

/// A viewer of one run: an actor and the capabilities it holds *now* in the
/// run's workspace. Guidance and translations never offer what the viewer
/// cannot do or see.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Viewer {
    /// The actor's id.
    pub actor_id: String,
    /// Capabilities held in the run's workspace.
    pub capabilities: BTreeSet<String>,
}

impl Viewer {
    /// A viewer holding `caps` in the run's workspace.
    pub fn new<I, S>(actor_id: impl Into<String>, caps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self { actor_id: actor_id.into(), capabilities: caps.into_iter().map(Into::into).collect() }
    }

    /// Whether the viewer holds `capability` in the run's workspace.
    pub fn can(&self, capability: &str) -> bool {
        self.capabilities.contains(capability)
    }
}
