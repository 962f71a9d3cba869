//! `--baseline`: the same N jobs through bare apalis on the same queue (a
//! namespace of its own), no run truth: what the truth costs is the ratio.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oprun_shared::JobQueue;
use oprun_worker::queue::{JobHandler, Queue, WorkerOptions, run_worker};
use serde_json::Value;
use tokio::sync::watch;

use crate::app::{App, CliError, CliResult};

struct Count(Arc<AtomicU64>);

#[async_trait]
impl JobHandler for Count {
    async fn handle(&self, _payload: Value) -> Result<(), oprun_worker::Retry> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Bare apalis: the same N jobs, no run truth.
pub(super) async fn baseline(app: &App, n: u64, concurrency: usize) -> CliResult<f64> {
    let mut cfg = app.config.queue.clone();
    cfg.namespace = format!("{}-baseline-{}", cfg.namespace, uuid::Uuid::now_v7().simple());
    let queue = Queue::open(&cfg, app.db.sqlite.clone()).await.map_err(|e| CliError::Runtime(format!("{e:#}")))?;
    let count = Arc::new(AtomicU64::new(0));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let opts =
        WorkerOptions { name_prefix: "bench-baseline".into(), concurrency, shutdown_grace: Duration::from_secs(10) };
    let started = Instant::now();
    let (q, c) = (queue.clone(), cfg.clone());
    let handler = Arc::new(Count(count.clone()));
    let worker = tokio::spawn(async move {
        run_worker(q, c, opts, handler, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await
    });
    let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
    queue.push_many(&ids).await.map_err(|e| CliError::Runtime(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while count.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(CliError::Runtime("baseline did not finish in 10 minutes".into()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = worker.await;
    Ok(rate)
}
