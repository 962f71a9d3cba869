//! Cancel: a queued run ends at once; a running run is asked to stop and its
//! lease holder ends it.

use serde::Serialize;
use tracing::instrument;
use uuid::Uuid;

use super::{OperationRunService, ServiceError};
use crate::audit::AuditEntry;
use crate::lifecycle::{RunStatus, Transition};
use crate::reason::ReasonCode;
use crate::run::{Initiator, OperationRun};
use crate::store::{Guard, RunWrite};

/// What cancel did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", content = "run", rename_all = "snake_case")]
pub enum Cancelled {
    /// The queued run is now completed/cancelled.
    Cancelled(OperationRun),
    /// The running run carries a cancel request; its worker ends it.
    Requested(OperationRun),
}

impl OperationRunService {
    /// Cancel: a queued run ends cancelled at once; a running run gets a
    /// cancel request that its lease owner honours.
    #[instrument(skip_all, fields(run.id = %id), err)]
    pub async fn cancel(&self, id: Uuid, actor: &Initiator) -> Result<Cancelled, ServiceError> {
        let now = self.clock.now();
        let reason = ReasonCode::RunCancelledByOperator.as_str();
        let write = RunWrite::cancel(now, reason);
        let audit = AuditEntry::new(now, actor.clone(), Transition::Cancel.action()).reason(reason);
        let queued = Guard::from(RunStatus::Queued);
        if let Some(run) = self.store.update_runs(&[id], &queued, &write, now, Some(&audit)).await?.pop() {
            return Ok(Cancelled::Cancelled(run));
        }
        let write = RunWrite::request_cancel(now);
        let audit = AuditEntry::new(now, actor.clone(), Transition::CancelRequest.action());
        let running = Guard::from(RunStatus::Running);
        if let Some(run) = self.store.update_runs(&[id], &running, &write, now, Some(&audit)).await?.pop() {
            return Ok(Cancelled::Requested(run));
        }
        Err(self.refused(id, Transition::Cancel, &queued).await)
    }
}
