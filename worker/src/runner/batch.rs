//! The finish batcher behind every worker: it takes whatever finishes are
//! waiting (up to [`MAX_BATCH`]) and writes them in one transaction, with up
//! to [`BATCHES_IN_FLIGHT`] in flight (group commit); and the reauthorization
//! of a claimed batch, one decision per key.

use std::sync::Arc;

use oprun_shared::{
    Authorizer, Decision, Finish, Lease, OperationRun, OperationRunService, ServiceError, StoreError, TransitionError,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// The most runs one finish transaction takes.
const MAX_BATCH: usize = 512;

/// Why a finish write did not happen: the run moved on (`Transition`) or
/// the store failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum FinishFailed {
    #[error("{0}")]
    Transition(#[source] TransitionError),
    #[error("run store: {0}")]
    Store(#[source] Arc<ServiceError>),
    #[error("run store: the finish batcher stopped")]
    Stopped,
}

pub(super) type FinishRequest = (Lease, Finish, oneshot::Sender<Result<OperationRun, FinishFailed>>);

/// The finish batcher: every run's finish goes through one task, which
/// takes whatever is waiting (up to [`MAX_BATCH`]) and writes it in one
/// transaction. Under load many runs
/// share one commit (group commit); alone, a run waits for nothing.
#[derive(Debug)]
pub(super) struct Batches {
    pub(super) finishes: mpsc::UnboundedSender<FinishRequest>,
}

/// Take the first waiting request and whatever else is already waiting.
async fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(x) => batch.push(x),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// The key reauthorization depends on: runs in one batch that share it
/// share one decision (the same truth read at the same moment).
fn decision_key(run: &OperationRun) -> DecisionKey {
    (
        run.initiator.id.clone(),
        run.operation.clone(),
        run.workspace_id.clone(),
        run.environment_id.clone(),
        run.target_type.clone(),
        run.target_id.clone(),
    )
}

/// What reauthorization said of each key a batch met: runs that share a
/// key share one decision (the same truth read at the same moment).
#[derive(Default)]
pub(super) struct Decisions {
    seen: Vec<(DecisionKey, Result<Decision, Arc<StoreError>>)>,
}

type DecisionKey = (String, String, String, Option<String>, Option<String>, Option<String>);

impl Decisions {
    /// Reauthorize `run` against current truth (once per key).
    pub(super) async fn reauthorize(
        &mut self,
        authorizer: &Authorizer,
        run: &OperationRun,
    ) -> Result<Decision, Arc<StoreError>> {
        let key = decision_key(run);
        if let Some((_, d)) = self.seen.iter().find(|(k, _)| *k == key) {
            return d.clone();
        }
        let span = tracing::info_span!("reauthorize", operation = %run.operation, workspace = %run.workspace_id);
        let d = authorizer.reauthorize(run).instrument(span).await.map_err(Arc::new);
        self.seen.push((key, d.clone()));
        d
    }
}

/// Batches in flight at once per batcher: while one waits for its commit,
/// the next is already being written (the database groups the commits).
const BATCHES_IN_FLIGHT: usize = 3;

pub(super) async fn finish_loop(mut rx: mpsc::UnboundedReceiver<FinishRequest>, service: OperationRunService) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(mut batch) = next_batch(&mut rx).await {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        // Others were writing: what arrived while this waited for a slot
        // joins it (fewer, larger transactions under load).
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        let service = service.clone();
        tokio::spawn(async move {
            finish_one_batch(batch, &service).await;
            drop(permit);
        });
    }
}

async fn finish_one_batch(batch: Vec<FinishRequest>, service: &OperationRunService) {
    let items: Vec<(Lease, Finish)> = batch.iter().map(|(lease, f, _)| (lease.clone(), f.clone())).collect();
    match service.finish_batch(&items).await {
        Err(e) => {
            let e = Arc::new(e);
            for (_, _, tx) in batch {
                let _ = tx.send(Err(FinishFailed::Store(e.clone())));
            }
        }
        Ok(results) => {
            for ((_, _, tx), r) in batch.into_iter().zip(results) {
                let _ = tx.send(r.map_err(|e| match e {
                    ServiceError::Transition(t) => FinishFailed::Transition(t),
                    other => FinishFailed::Store(Arc::new(other)),
                }));
            }
        }
    }
}
