//! The end-to-end harness: a real store (Postgres or a SQLite file), a real
//! queue (Redis, or apalis-sqlite in the same file), the real worker loop and
//! a test operation that counts its own invocations.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use oprun_scheduler::Dispatcher;
use oprun_shared::config::{QueueBackend, QueueConfig};
use oprun_shared::testing::{self, TestStore};
use oprun_shared::{
    AccessFile, Authorizer, Catalog, Clock, Completion, JobQueue, OperationRun, OperationRunService, RunStatus,
    RunStore, ServiceConfig, SummaryCounts, SystemClock,
};
use oprun_worker::queue::{Queue, WorkerOptions, run_worker};
use oprun_worker::{Operation, OperationError, Operations, RunContext, Runner};
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

/// Which stack a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// Production: Postgres runs + Redis queue.
    PostgresRedis,
    /// Embedded: one SQLite file for runs and queue.
    Sqlite,
}

/// The catalog the end-to-end tests use: `test.count` (environment scope,
/// provider graph) runs [`Counting`]; `test.slow` walks the demo collection.
pub const CATALOG: &str = r#"
capabilities = ["inventory.sync", "report.build"]

[operations."test.count"]
kind = "count"
capability = "inventory.sync"
scope = "environment"
provider = "graph"
lease = "20s"
heartbeat = "2s"
max_attempts = 3

[operations."test.fanout"]
kind = "count"
capability = "inventory.sync"
scope = "environment"
provider = "graph"
dedup = "none"

[operations."test.collect"]
kind = "http.collect"
provider = "graph"
capability = "inventory.sync"
scope = "environment"
dedup = "none"
lease = "20s"
heartbeat = "1s"
max_attempts = 3
settings = { path = "/coll/{environment}" }

[operations."test.call"]
kind = "http.call"
provider = "graph"
capability = "inventory.sync"
scope = "environment"
dedup = "none"
settings = { path = "/call/{environment}", method = "POST" }

[operations."test.slow"]
kind = "demo"
capability = "inventory.sync"
scope = "environment"
lease = "3s"
heartbeat = "1s"
max_attempts = 3
resumable = true

[operations."test.report"]
kind = "count"
capability = "report.build"
scope = "workspace"
dedup = "none"

[operations."test.collect_campaign"]
kind = "http.collect"
provider = "graph"
capability = "inventory.sync"
scope = "environment"
dedup = "none"
lease = "20s"
heartbeat = "1s"
max_attempts = 50
resumable = true
settings = { path = "/campaign/{environment}/{target_id}", items = "value" }

# tests/load.rs: one provider call per run, and a scheduled one per tick.
[operations."load.call"]
kind = "http.call"
provider = "graph"
capability = "inventory.sync"
scope = "environment"
dedup = "none"
max_attempts = 3
settings = { path = "/load/{target_id}", method = "POST" }

[operations."load.tick"]
kind = "http.call"
provider = "graph"
capability = "inventory.sync"
scope = "environment"
dedup = "none"
settings = { path = "/tick/{environment}", method = "POST" }
"#;

/// Access truth for the end-to-end tests: one actor and one environment per
/// reauthorization case, so that a single edit breaks each run differently.
pub const ACCESS: &str = r#"
[roles]
operator = ["inventory.sync", "report.build", "runs.view", "runs.retry", "runs.cancel", "runs.reconcile"]
automation = ["inventory.sync", "report.build"]
viewer = ["runs.view"]

[[actors]]
id = "ops-user-1"
kind = "user"
[[actors]]
id = "cap-user"
kind = "user"
[[actors]]
id = "gone-user"
kind = "user"
[[actors]]
id = "svc-scheduler"
kind = "service"
[[actors]]
id = "viewer-1"
kind = "user"
[[actors]]
id = "fab-user"
kind = "user"

[[workspaces]]
id = "contoso"
[[workspaces]]
id = "fabrikam"

[[environments]]
id = "contoso-prod"
workspace = "contoso"
[[environments]]
id = "contoso-dev"
workspace = "contoso"
[[environments]]
id = "contoso-moving"
workspace = "contoso"
[[environments]]
id = "contoso-revoked"
workspace = "contoso"
[[environments]]
id = "contoso-lab"
workspace = "contoso"
status = "suspended"
[[environments]]
id = "fabrikam-prod"
workspace = "fabrikam"

[[memberships]]
actor = "ops-user-1"
workspace = "contoso"
role = "operator"
[[memberships]]
actor = "cap-user"
workspace = "contoso"
role = "operator"
[[memberships]]
actor = "gone-user"
workspace = "contoso"
role = "operator"
[[memberships]]
actor = "svc-scheduler"
workspace = "contoso"
role = "automation"
[[memberships]]
actor = "svc-scheduler"
workspace = "fabrikam"
role = "automation"
[[memberships]]
actor = "viewer-1"
workspace = "contoso"
role = "viewer"
[[memberships]]
actor = "fab-user"
workspace = "fabrikam"
role = "operator"

[[provider_connections]]
environment = "contoso-prod"
provider = "graph"
[[provider_connections]]
environment = "contoso-dev"
provider = "graph"
[[provider_connections]]
environment = "contoso-moving"
provider = "graph"
[[provider_connections]]
environment = "contoso-revoked"
provider = "graph"
[[provider_connections]]
environment = "contoso-lab"
provider = "graph"
[[provider_connections]]
environment = "fabrikam-prod"
provider = "graph"
"#;

pub fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::from_toml(CATALOG).expect("test catalog"))
}

pub fn access(text: &str) -> AccessFile {
    let caps = oprun_shared::access::grantable_capabilities(&catalog());
    AccessFile::from_toml(text, "test access", Some(&caps)).expect("test access file")
}

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
            .map_err(|e| OperationError::failed("unknown_error", e.to_string()))?;
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
        init_logs();
        let db = TestStore::new(match stack {
            Stack::PostgresRedis => testing::Backend::Postgres,
            Stack::Sqlite => testing::Backend::Sqlite,
        })
        .await;
        db.access.apply_access(&access(ACCESS)).await.expect("apply test access");
        let queue_config = match stack {
            Stack::PostgresRedis => QueueConfig {
                backend: QueueBackend::Redis,
                url: Some(testing::require_env(testing::REDIS_URL_VAR)),
                namespace: format!("oprun-test-{}", Uuid::now_v7().simple()),
                poll_interval: Duration::from_millis(50),
                ..QueueConfig::default()
            },
            Stack::Sqlite => QueueConfig {
                backend: QueueBackend::Sqlite,
                poll_interval: Duration::from_millis(50),
                ..QueueConfig::default()
            },
        };
        let queue = Arc::new(Queue::open(&queue_config, db.database.sqlite.clone()).await.expect("open the queue"));
        let service = Self::service_with(db.store.clone(), Arc::new(SystemClock));
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
}

/// Run each case once per stack, as `postgres_redis::<case>` and
/// `sqlite::<case>`. The cases are the root module's functions, or, written
/// `family: [cases]`, the functions of the root's module `family`.
#[macro_export]
macro_rules! both_stacks {
    ($($family:ident: [$($case:ident),* $(,)?]),* $(,)?) => {
        mod postgres_redis {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$family::$case(super::Stack::PostgresRedis).await;
                }
            )*)*
        }
        mod sqlite {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$family::$case(super::Stack::Sqlite).await;
                }
            )*)*
        }
    };
    ($($case:ident),* $(,)?) => {
        mod postgres_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Stack::PostgresRedis).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Stack::Sqlite).await;
                }
            )*
        }
    };
}

/// What the in-process servers (API, worker, scheduler) log in a test, unless
/// `RUST_LOG` says otherwise: the binary's default with this workspace's
/// crates at debug.
pub const TEST_LOG_FILTER: &str =
    "info,sqlx=warn,oprun=debug,oprun_shared=debug,oprun_worker=debug,oprun_scheduler=debug";

/// This test process's log subscriber: every line (filtered by
/// [`TEST_LOG_FILTER`]) to the test's captured stdout, which nextest keeps in
/// its JUnit report for the closing secret scan (scripts/scan-secrets.sh);
/// and, once [`capture_logs`] is called, every debug line into its buffer.
struct TestLogs {
    buf: Arc<std::sync::Mutex<String>>,
    capturing: Arc<std::sync::atomic::AtomicBool>,
}

fn test_logs() -> &'static TestLogs {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter, dynamic_filter_fn};
    use tracing_subscriber::prelude::*;
    static LOGS: std::sync::OnceLock<TestLogs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(String::new()));
        let capturing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(TEST_LOG_FILTER));
        let to_stdout = tracing_subscriber::fmt::layer().with_ansi(false).with_test_writer().with_filter(filter);
        let (sink, on) = (buf.clone(), capturing.clone());
        let when_capturing =
            dynamic_filter_fn(move |m, _| on.load(Ordering::SeqCst) && *m.level() <= tracing::Level::DEBUG)
                .with_max_level_hint(LevelFilter::DEBUG);
        let to_buf = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .with_filter(when_capturing);
        let _ = tracing_subscriber::registry().with(to_stdout).with(to_buf).try_init();
        TestLogs { buf, capturing }
    })
}

/// Send this test process's log lines to its captured output (every [`Env`]
/// does; idempotent).
pub fn init_logs() {
    test_logs();
}

/// Capture every log line of this test process (tests run one per process
/// under nextest) into a buffer, from now on; they still reach the test's
/// output too.
pub fn capture_logs() -> Arc<std::sync::Mutex<String>> {
    let logs = test_logs();
    logs.capturing.store(true, Ordering::SeqCst);
    logs.buf.clone()
}

struct LogSink(Arc<std::sync::Mutex<String>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(b));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every row of every table as text (Postgres), or the database files
/// themselves (SQLite), for searching.
pub async fn dump_tables(e: &Env) -> String {
    match e.stack {
        Stack::Sqlite => {
            let path = e.db.url.trim_start_matches("sqlite://").to_string();
            let mut out = String::new();
            for suffix in ["", "-wal"] {
                if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
            out
        }
        Stack::PostgresRedis => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&e.db.url).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            let mut out = String::new();
            for t in tables {
                let rows: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM \"{t}\" t")))
                        .fetch_all(&mut conn)
                        .await
                        .unwrap();
                out.push_str(&rows.join("\n"));
            }
            out
        }
    }
}

/// A config file for the `oprun` binary on this env's store and queue, with a
/// `graph` provider at `provider_base` (its token in a file under `dir`).
pub fn binary_config(e: &Env, dir: &std::path::Path, provider_base: &str) -> String {
    let token_file = dir.join("graph.token");
    if !token_file.exists() {
        std::fs::write(&token_file, provider_token("binary-config")).unwrap();
    }
    let queue = match e.stack {
        Stack::PostgresRedis => format!(
            "backend = \"redis\"\nurl = \"{}\"\nnamespace = \"{}\"\n",
            e.queue_config.url.as_deref().unwrap(),
            e.queue_config.namespace
        ),
        Stack::Sqlite => "backend = \"sqlite\"\n".to_string(),
    };
    format!(
        "{CATALOG}\n[store]\nurl = \"{url}\"\nmax_connections = 4\n[queue]\n{queue}poll_interval = \"50ms\"\n\
         [worker]\nconcurrency = 2\nshutdown_grace = \"1s\"\n[api]\nenabled = false\n\
         [providers.graph]\nbase_url = \"{provider_base}\"\ntoken_file = \"{token}\"\n",
        url = e.db.url,
        token = token_file.display()
    )
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

// ---- Secrets and logs for the closing scan (scripts/scan-secrets.sh) ----

/// Every provider token a test hands out contains this marker, so that the
/// scan after the whole suite finds any that reached a table, the queue or a
/// log line.
pub const SECRET_MARK: &str = "oprun-canary";

/// A provider token for a test: `tok-oprun-canary-NAME`.
pub fn provider_token(name: &str) -> String {
    format!("tok-{SECRET_MARK}-{name}")
}

/// Where a spawned process's log goes: a fresh file under
/// `OPRUN_TEST_LOG_DIR` (the test command sets it and scans it afterwards),
/// else `fallback`.
pub fn process_log(fallback: &std::path::Path, name: &str) -> std::path::PathBuf {
    match std::env::var_os("OPRUN_TEST_LOG_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("create OPRUN_TEST_LOG_DIR");
            dir.join(format!("{name}-{}.log", Uuid::now_v7().simple()))
        }
        _ => fallback.to_path_buf(),
    }
}

/// Start `oprun --config CFG ROLE` (the binary under test) with its stderr
/// appended to `log`, none of the environment's overrides inherited.
pub fn spawn_oprun(role: &str, cfg: &std::path::Path, log: &std::path::Path, rust_log: &str) -> std::process::Child {
    use std::process::{Command, Stdio};
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open the process log");
    Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["--config", cfg.to_str().expect("a UTF-8 config path"), role])
        .env_remove("OPRUN_DATABASE_URL")
        .env_remove("OPRUN_QUEUE_URL")
        .env_remove("OPRUN_CONFIG")
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap_or_else(|e| panic!("start oprun {role}: {e}"))
}

/// A child process killed when dropped still running (a failed assertion
/// leaves no process behind).
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Wait (at most `secs`) for the process to exit; its status. Still
/// running then is a test failure (the process is SIGKILLed on drop).
pub async fn exit_within(child: &mut Reaped, secs: u64) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("the process was still running {secs} s after SIGTERM (SIGKILLed)");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---- Fault-injection support (tests/faults.rs) ----

/// A Redis queue config on `url` in a fresh namespace.
pub fn redis_queue_config(url: &str) -> QueueConfig {
    QueueConfig {
        backend: QueueBackend::Redis,
        url: Some(url.to_string()),
        namespace: format!("oprun-test-{}", Uuid::now_v7().simple()),
        poll_interval: Duration::from_millis(50),
        ..QueueConfig::default()
    }
}

impl Env {
    /// An env on the store `db` with the queue `queue_config` (test access applied).
    pub async fn with_parts(stack: Stack, db: TestStore, queue_config: QueueConfig) -> Self {
        init_logs();
        db.access.apply_access(&access(ACCESS)).await.expect("apply test access");
        let queue = Arc::new(Queue::open(&queue_config, db.database.sqlite.clone()).await.expect("open the queue"));
        let service = Self::service_with(db.store.clone(), Arc::new(SystemClock));
        let authorizer = Authorizer::new(db.access.clone(), catalog());
        let dispatcher = Dispatcher::new(service.clone(), authorizer.clone(), queue.clone() as Arc<dyn JobQueue>);
        Self { stack, db, queue, queue_config, service, authorizer, dispatcher, counting: Counting::default() }
    }

    /// Postgres + Redis: a fresh database on the test Postgres, the queue on
    /// the Redis at `url` (a private server a test may kill and restart).
    pub async fn with_redis_url(stack: Stack, url: &str) -> Self {
        assert_eq!(stack, Stack::PostgresRedis, "a Redis URL only makes sense on the Postgres + Redis stack");
        let db = TestStore::new(testing::Backend::Postgres).await;
        Self::with_parts(stack, db, redis_queue_config(url)).await
    }

    /// Postgres + Redis on the store `db` (e.g. [`test_store_at`] a private
    /// Postgres), the queue on the shared test Redis.
    pub async fn with_store(db: TestStore) -> Self {
        let url = testing::require_env(testing::REDIS_URL_VAR);
        Self::with_parts(Stack::PostgresRedis, db, redis_queue_config(&url)).await
    }
}

/// A migrated store on the Postgres database at `url` (a private server).
/// `TestStore` can only be built by `oprun_shared::testing`, so this takes a
/// throwaway SQLite one (its temp dir is the only private field) and points
/// every public field at `url`.
pub async fn test_store_at(url: &str) -> TestStore {
    let database = oprun_shared::store::open(url, 8).await.expect("connect to the private Postgres");
    database.runs.migrate().await.expect("migrate the private Postgres");
    let mut db = TestStore::sqlite().await;
    db.store = database.runs.clone();
    db.access = database.access.clone();
    db.database = database;
    db.url = url.to_string();
    db
}

impl WorkerHandle {
    /// Whether the worker task is still running (it has not returned or panicked).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Env {
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
