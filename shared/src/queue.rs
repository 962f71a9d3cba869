//! What dispatch needs from the queue: to say that runs became ready. The
//! run row is the job (the worker crate's queue claims straight from the run
//! store), so a push is a wake-up, and a lost one costs at most a worker's
//! poll interval.

use uuid::Uuid;

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
