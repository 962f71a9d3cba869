//! One stack for a test: the store, the queue, the service, the dispatcher
//! and the real worker loop (with the counting test operation), built on the
//! shared test servers or on private ones (fault injection).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use oprun_scheduler::Dispatcher;
use oprun_shared::testing::{self, TestStore};
use oprun_shared::{
    Authorizer, Clock, Completion, JobQueue, OperationRun, OperationRunService, RunStatus, RunStore, ServiceConfig,
    SummaryCounts, SystemClock,
};
use oprun_worker::config::QueueConfig;
use oprun_worker::queue::{Queue, WorkerOptions, run_worker};
use oprun_worker::{Operation, OperationError, Operations, RunContext, Runner};
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

use super::{ACCESS, Stack, access, catalog, init_logs};

/// A test operation that counts its invocations and reports one page.
#[derive(Debug, Default, Clone)]
pub struct Counting {
    pub calls: Arc<AtomicUsize>,
}

#[async_trait]
impl Operation for Counting {
    async fn execute(&self, ctx: &RunContext) -> Result<Completion, OperationError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if ctx.params().get("panic").is_some() {
            panic!("the test operation was told to panic");
        }
        let counts = SummaryCounts::new()
            .with("total", 3)
            .and_then(|c| c.with("succeeded", 3))
            .and_then(|c| c.with("pages", 1))
            .map_err(|e| OperationError::failed(oprun_shared::ReasonCode::UnknownError, e.to_string()))?;
        ctx.progress(counts, Some(json!({"page": 1}))).await?;
        Ok(Completion::succeeded(SummaryCounts::new()))
    }
}

/// One stack: store, queue, service, dispatcher, and a worker to start.
pub struct Env {
    pub stack: Stack,
    pub db: TestStore,
    pub queue: Arc<Queue>,
    pub queue_config: QueueConfig,
    pub service: OperationRunService,
    pub authorizer: Authorizer,
    pub dispatcher: Dispatcher,
    pub counting: Counting,
}

impl Env {
    pub async fn new(stack: Stack) -> Self {
        Self::with_clock(stack, Arc::new(SystemClock)).await
    }

    /// As [`Env::new`], every decision by `clock` (a manual clock: retries
    /// and snoozes come due when the test moves it).
    pub async fn with_clock(stack: Stack, clock: Arc<dyn Clock>) -> Self {
        init_logs();
        let db = TestStore::new(match stack {
            Stack::PostgresRedis => testing::Backend::Postgres,
            Stack::Sqlite => testing::Backend::Sqlite,
        })
        .await;
        db.access.apply_access(&access(ACCESS)).await.expect("apply test access");
        let queue_config = test_queue_config();
        let queue = Arc::new(Queue::new(db.store.clone(), clock.clone()));
        let service = Self::service_with(db.store.clone(), clock);
        let authorizer = Authorizer::new(db.access.clone(), catalog());
        let dispatcher = Dispatcher::new(service.clone(), authorizer.clone(), queue.clone() as Arc<dyn JobQueue>);
        Self { stack, db, queue, queue_config, service, authorizer, dispatcher, counting: Counting::default() }
    }

    pub fn service_with(store: Arc<dyn RunStore>, clock: Arc<dyn Clock>) -> OperationRunService {
        OperationRunService::new(store, catalog(), clock, ServiceConfig::default())
    }

    pub fn operations(&self) -> Operations {
        let mut ops = Operations::builtin();
        ops.register("count", self.counting.clone());
        ops
    }

    pub fn runner(&self, name: &str) -> Runner {
        Runner::new(self.service.clone(), self.authorizer.clone(), self.operations(), name.to_string())
    }

    /// A runner that also knows the HTTP kinds, with `providers`.
    pub fn http_runner(&self, name: &str, providers: &oprun_worker::http::Providers) -> Runner {
        let mut ops = self.operations();
        providers.register(&mut ops);
        Runner::new(self.service.clone(), self.authorizer.clone(), ops, name.to_string())
    }

    /// Start the real worker loop with `runner`; stop it with the returned handle.
    pub fn start_worker(&self, runner: Runner) -> WorkerHandle {
        let (tx, mut rx) = watch::channel(false);
        let (queue, cfg) = (self.queue.clone(), self.queue_config.clone());
        let opts = WorkerOptions { name_prefix: "test".into(), concurrency: 4, shutdown_grace: Duration::from_secs(5) };
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            run_worker((*queue).clone(), cfg, opts, Arc::new(runner), stop).await
        });
        WorkerHandle { tx, task }
    }

    pub fn calls(&self) -> usize {
        self.counting.calls.load(Ordering::SeqCst)
    }

    /// Wait until the run is completed (at most `secs`).
    /// Dispatch `req`; the run it wrote (anything else fails the test).
    pub async fn dispatch_new(&self, req: oprun_shared::DispatchRequest) -> OperationRun {
        match self.dispatcher.dispatch(req).await.unwrap() {
            oprun_scheduler::DispatchOutcome::Dispatched { run, .. } => *run,
            other => panic!("{other:?}"),
        }
    }

    pub async fn until_completed(&self, id: Uuid, secs: u64) -> OperationRun {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let run = self.service.get(id).await.expect("read run");
            if run.status == RunStatus::Completed {
                return run;
            }
            assert!(tokio::time::Instant::now() < deadline, "run {id} still {} after {secs}s", run.status);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `check` holds (at most `secs`).
    pub async fn until<F: FnMut() -> bool>(mut check: F, secs: u64, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An env on the store `db` with the queue `queue_config` (test access applied).
    pub async fn with_parts(stack: Stack, db: TestStore, queue_config: QueueConfig) -> Self {
        init_logs();
        db.access.apply_access(&access(ACCESS)).await.expect("apply test access");
        let queue = Arc::new(Queue::new(db.store.clone(), Arc::new(SystemClock)));
        let service = Self::service_with(db.store.clone(), Arc::new(SystemClock));
        let authorizer = Authorizer::new(db.access.clone(), catalog());
        let dispatcher = Dispatcher::new(service.clone(), authorizer.clone(), queue.clone() as Arc<dyn JobQueue>);
        Self { stack, db, queue, queue_config, service, authorizer, dispatcher, counting: Counting::default() }
    }

    /// Postgres on the store `db` (e.g. [`test_store_at`] a private
    /// Postgres).
    pub async fn with_store(db: TestStore) -> Self {
        Self::with_parts(Stack::PostgresRedis, db, test_queue_config()).await
    }

    /// [`Env::start_worker`] with `concurrency` slots instead of 4.
    pub fn start_worker_with(&self, runner: Runner, concurrency: usize) -> WorkerHandle {
        let (tx, mut rx) = watch::channel(false);
        let (queue, cfg) = (self.queue.clone(), self.queue_config.clone());
        let opts = WorkerOptions { name_prefix: "test".into(), concurrency, shutdown_grace: Duration::from_secs(5) };
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            run_worker((*queue).clone(), cfg, opts, Arc::new(runner), stop).await
        });
        WorkerHandle { tx, task }
    }
}

pub struct WorkerHandle {
    tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl WorkerHandle {
    pub async fn stop(self) {
        let _ = self.tx.send(true);
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the worker stops within its grace period")
            .expect("worker task")
            .expect("worker result");
    }

    /// Whether the worker task is still running (it has not returned or panicked).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

/// The tests' queue settings: an idle worker looks every 50 ms.
pub fn test_queue_config() -> QueueConfig {
    QueueConfig { poll_interval: Duration::from_millis(50) }
}

/// A migrated store on the Postgres database at `url` (a private server).
/// `TestStore` can only be built by `oprun_shared::testing`, so this takes a
/// throwaway SQLite one (its temp dir is the only private field) and points
/// every public field at `url`.
pub async fn test_store_at(url: &str) -> TestStore {
    let database = oprun_shared::Database::postgres(url, 8).await.expect("connect to the private Postgres");
    database.runs.migrate().await.expect("migrate the private Postgres");
    let mut db = TestStore::sqlite().await;
    db.store = database.runs.clone();
    db.access = database.access.clone();
    db.database = database;
    db.url = url.to_string();
    db
}

/// Reconcile as on-call at `secs` seconds from now (past lease expiry and
/// grace), pushing the jobs of requeued runs.
pub async fn reconcile_later(e: &Env, secs: i64) -> oprun_shared::ReconcileReport {
    let later = Arc::new(oprun_shared::ManualClock::new(SystemClock.now() + chrono::Duration::seconds(secs)));
    let service = Env::service_with(e.db.store.clone(), later);
    let d = Dispatcher::new(service, e.authorizer.clone(), e.queue.clone() as Arc<dyn JobQueue>);
    oprun_scheduler::reconcile_and_push(
        &d,
        &oprun_shared::Initiator::user("oncall-1"),
        &oprun_shared::ReconcileFilter::default(),
        false,
    )
    .await
    .unwrap()
}

/// A dispatch of `operation` with `params` by `ops-user-1` from the CLI, on
/// `contoso` / `contoso-prod`.
pub fn prod_request(operation: &str, params: serde_json::Value) -> oprun_shared::DispatchRequest {
    oprun_shared::DispatchRequest {
        available_at: None,
        operation: operation.into(),
        scope: oprun_shared::Scope {
            workspace_id: "contoso".into(),
            environment_id: Some("contoso-prod".into()),
            ..oprun_shared::Scope::default()
        },
        initiator: oprun_shared::Initiator::user("ops-user-1"),
        source: oprun_shared::SourceSurface::Cli,
        context: json!({}),
        params,
    }
}
