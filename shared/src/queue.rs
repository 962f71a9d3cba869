//! What dispatch needs from the job queue: push a job that carries only a run
//! id. The worker crate implements it on apalis (Redis, SQLite); the run row,
//! not the queue, is the truth, so a lost push is repaired by the reconciler's
//! re-push.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The whole queue payload. Workers treat it as untrusted: only `run_id` is
/// read, everything else comes from the run row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPayload {
    /// The run to handle.
    pub run_id: Uuid,
}

/// A push that did not reach the queue.
#[derive(Debug, thiserror::Error)]
#[error("queue push failed: {0}")]
pub struct QueueError(pub String);

/// Pushes jobs for runs that the service has already written `queued`.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync {
    /// Push one job for `run_id`.
    async fn push(&self, run_id: Uuid) -> Result<(), QueueError>;

    /// Check that the queue answers.
    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// Jobs waiting to be fetched, if the backend can tell.
    async fn depth(&self) -> Result<Option<u64>, QueueError> {
        Ok(None)
    }

    /// Push one job per id (backends batch where they can).
    async fn push_many(&self, run_ids: &[Uuid]) -> Result<(), QueueError> {
        for id in run_ids {
            self.push(*id).await?;
        }
        Ok(())
    }
}
