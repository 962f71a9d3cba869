//! Test support for this workspace's integration tests: throwaway stores on
//! real servers, a catalog, and a factory that writes a run in any state.
//! Compiled only with the `testing` feature.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::access::AccessStore;
use crate::audit::{AuditEntry, AuditEvent};
use crate::store::{Database, Guard, Inserted, RunFilter, RunWrite, StaleQuery, StaleRun, StoreError, Update, Written};
use crate::ticks::TickStore;
use crate::tokens::TokenStore;
use crate::{
    Catalog, Clock, Initiator, ManualClock, OperationRun, OperationRunService, RunOutcome, RunStatus, RunStore,
    ServiceConfig, SourceSurface, SummaryCounts,
};

/// The variable naming the Postgres server the tests create databases on.
pub const POSTGRES_URL_VAR: &str = "OPRUN_TEST_POSTGRES_URL";
/// The variable naming the Redis server the tests use.
pub const REDIS_URL_VAR: &str = "OPRUN_TEST_REDIS_URL";

/// The variable naming the directory the test command (`scripts/test.sh`)
/// keeps what the tests leave in, and scans for a secret in clear afterwards.
pub const LOG_DIR_VAR: &str = "OPRUN_TEST_LOG_DIR";

/// A fresh directory for what a test leaves: under `OPRUN_TEST_LOG_DIR/KIND`
/// when the variable is set, kept after the test so the closing secret scan
/// reads it (the test command removes the whole directory afterwards); else a
/// temp dir removed on drop.
pub fn kept_dir(kind: &str) -> tempfile::TempDir {
    match std::env::var_os(LOG_DIR_VAR) {
        Some(root) if !root.is_empty() => {
            let parent = std::path::PathBuf::from(root).join(kind);
            std::fs::create_dir_all(&parent)
                .unwrap_or_else(|e| panic!("create {}: {e} ({LOG_DIR_VAR})", parent.display()));
            tempfile::Builder::new()
                .prefix("test-")
                .disable_cleanup(true)
                .tempdir_in(&parent)
                .unwrap_or_else(|e| panic!("a directory under {}: {e}", parent.display()))
        }
        _ => tempfile::tempdir().expect("temp dir"),
    }
}

/// A server URL from the environment. Missing is a test failure, never a
/// skip: the README's test command (`scripts/test.sh`) starts the servers.
pub fn require_env(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: this test needs a real server. Run the tests with scripts/test.sh, \
             which installs and starts Postgres and Redis on loopback and exports {var}."
        ),
    }
}

/// Which store a conformance test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh database on the test Postgres server.
    Postgres,
    /// A fresh SQLite file, kept under `OPRUN_TEST_LOG_DIR/sqlite` for the
    /// closing secret scan when the variable is set ([`kept_dir`]).
    Sqlite,
}

/// A migrated, empty store that lives as long as this value.
#[derive(Debug)]
pub struct TestStore {
    /// The store.
    pub store: Arc<dyn RunStore>,
    /// The same database's access tables.
    pub access: Arc<dyn AccessStore>,
    /// Its API tokens.
    pub tokens: Arc<dyn TokenStore>,
    /// Its schedule ticks.
    pub ticks: Arc<dyn TickStore>,
    /// Both, plus the SQLite pool for the queue.
    pub database: Database,
    /// Its URL (for another process or pool on the same database).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    /// A fresh store of `backend`.
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Postgres => Self::postgres().await,
            Backend::Sqlite => Self::sqlite().await,
        }
    }

    /// A fresh database on the test Postgres server.
    pub async fn postgres() -> Self {
        let url = fresh_postgres_database().await;
        let database = Database::postgres(&url, 8).await.expect("connect to the test database");
        database.runs.migrate().await.expect("migrate the test database");
        Self::over(database, url, None)
    }

    /// A fresh SQLite file ([`kept_dir`]: left for the closing secret scan).
    pub async fn sqlite() -> Self {
        let dir = kept_dir("sqlite");
        let url = format!("sqlite://{}", dir.path().join("oprun.db").display());
        let database = Database::sqlite(&url, 8).await.expect("open the test SQLite file");
        database.runs.migrate().await.expect("migrate the test SQLite file");
        Self::over(database, url, Some(dir))
    }

    /// The parts of `database` as fields of their own, and the database.
    fn over(database: Database, url: String, dir: Option<tempfile::TempDir>) -> Self {
        Self {
            store: database.runs.clone(),
            access: database.access.clone(),
            tokens: database.tokens.clone(),
            ticks: database.ticks.clone(),
            database,
            url,
            _dir: dir,
        }
    }
}

/// Create an empty database on the test server and return its URL.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin = require_env(POSTGRES_URL_VAR);
    let name = format!("oprun_test_{}", Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test Postgres at {POSTGRES_URL_VAR}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    match admin.rfind('/') {
        Some(i) if admin[..i].ends_with(|c: char| c != '/') => format!("{}/{name}", &admin[..i]),
        _ => format!("{}/{name}", admin.trim_end_matches('/')),
    }
}

/// The catalog the tests use.
pub const TEST_CATALOG: &str = r#"
capabilities = ["inventory.sync", "tenant.audit", "report.build"]

[operations."inventory.sync"]
capability = "inventory.sync"
scope = "environment"
provider = "graph"
lease = "60s"
heartbeat = "15s"
queued_stale_after = "5m"
max_attempts = 3
resumable = true

[operations."tenant.audit"]
capability = "tenant.audit"
scope = "environment"
lease = "60s"
heartbeat = "15s"
queued_stale_after = "2m"
max_attempts = 3
resumable = false
retryable_by_operators = false

[operations."report.build"]
capability = "report.build"
scope = "workspace"
lease = "30s"
heartbeat = "10s"
dedup = "none"
max_attempts = 1
retry_partial = true
"#;

/// The access truth the tests start from: contoso (prod, dev active; old
/// suspended) and fabrikam; an operator and a viewer in contoso; the
/// scheduler's service actor; graph connections for the active environments.
pub const TEST_ACCESS: &str = r#"
[roles]
operator = ["inventory.sync", "tenant.audit", "report.build", "runs.view", "runs.retry", "runs.cancel", "runs.reconcile"]
viewer = ["runs.view"]
automation = ["inventory.sync", "tenant.audit", "report.build"]

[[actors]]
id = "ops-user-1"
kind = "user"
display_name = "Olga Operator"
[[actors]]
id = "viewer-1"
kind = "user"
[[actors]]
id = "svc-scheduler"
kind = "service"

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
id = "contoso-old"
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
actor = "viewer-1"
workspace = "contoso"
role = "viewer"
[[memberships]]
actor = "svc-scheduler"
workspace = "contoso"
role = "automation"
[[memberships]]
actor = "svc-scheduler"
workspace = "fabrikam"
role = "automation"

[[provider_connections]]
environment = "contoso-prod"
provider = "graph"
[[provider_connections]]
environment = "contoso-dev"
provider = "graph"
[[provider_connections]]
environment = "fabrikam-prod"
provider = "graph"
"#;

/// [`TEST_ACCESS`], parsed and checked against the test catalog.
pub fn access_file() -> crate::AccessFile {
    let caps = crate::access::grantable_capabilities(&catalog());
    crate::AccessFile::from_toml(TEST_ACCESS, "TEST_ACCESS", Some(&caps)).expect("test access file")
}

/// The test catalog, parsed.
pub fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::from_toml(TEST_CATALOG).expect("test catalog"))
}

/// A manual clock at a fixed, round instant.
pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(DateTime::parse_from_rfc3339("2026-11-02T09:00:00Z").expect("time").with_timezone(&Utc)))
}

/// A service over `store` with the test catalog and `clock`.
pub fn service(store: Arc<dyn RunStore>, clock: Arc<dyn Clock>) -> OperationRunService {
    OperationRunService::new(store, catalog(), clock, ServiceConfig::default())
}

/// A run as a factory would write it: queued `inventory.sync` on
/// contoso/contoso-prod; change any field, then [`insert`].
pub fn run(now: DateTime<Utc>) -> OperationRun {
    OperationRun {
        id: Uuid::now_v7(),
        operation: "inventory.sync".into(),
        workspace_id: "contoso".into(),
        environment_id: Some("contoso-prod".into()),
        target_type: None,
        target_id: None,
        initiator: Initiator::user("ops-user-1"),
        source_surface: SourceSurface::Cli,
        context: json!({}),
        params: json!({}),
        dedup_key: None,
        status: RunStatus::Queued,
        outcome: RunOutcome::Pending,
        reason_code: None,
        failure_summary: vec![],
        summary_counts: SummaryCounts::new(),
        checkpoint: None,
        attempt: 1,
        max_attempts: 3,
        snoozes: 0,
        refusals: 0,
        last_refused_at: None,
        refusal_key: None,
        retry_of: None,
        lease_owner: None,
        lease_expires_at: None,
        heartbeat_at: None,
        cancel_requested_at: None,
        queued_at: now,
        repushed_at: None,
        available_at: now,
        created_at: now,
        started_at: None,
        completed_at: None,
        updated_at: now,
    }
}

/// Make a factory run running, leased to `worker` until `expires`.
pub fn running(mut run: OperationRun, worker: &str, expires: DateTime<Utc>) -> OperationRun {
    run.status = RunStatus::Running;
    run.lease_owner = Some(worker.into());
    run.lease_expires_at = Some(expires);
    run.started_at = Some(run.created_at);
    run.heartbeat_at = Some(run.created_at);
    run
}

/// Write a factory run through the store (with a `test.factory` audit row).
pub async fn insert(store: &dyn RunStore, run: OperationRun) -> OperationRun {
    let audit = AuditEntry::new(run.created_at, Initiator::service("test-factory"), "test.factory");
    match store.insert_run(&run, &[audit]).await.expect("factory insert") {
        Inserted::New(r) => r,
        Inserted::Existing(r) => panic!("factory run collided with active run {}", r.id),
    }
}

/// A real store with store blips injected: it refuses chosen writes with a
/// database error, as a lost connection would, and passes everything else
/// through. It counts the refusals.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn RunStore>,
    finishes_to_fail: AtomicUsize,
    inserts_seen: AtomicUsize,
    failing_insert: Option<usize>,
    refused: AtomicUsize,
}

impl FaultyStore {
    /// Wrap `inner`, refusing nothing yet.
    pub fn new(inner: Arc<dyn RunStore>) -> Self {
        Self { inner, finishes_to_fail: 0.into(), inserts_seen: 0.into(), failing_insert: None, refused: 0.into() }
    }

    /// Refuse the first `n` finish writes (batched writes that complete a run).
    pub fn failing_finishes(self, n: usize) -> Self {
        Self { finishes_to_fail: n.into(), ..self }
    }

    /// Refuse the `nth` single-run insert (a dispatch; 1 is the first).
    pub fn failing_insert(self, nth: usize) -> Self {
        Self { failing_insert: Some(nth), ..self }
    }

    /// How many writes were refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(SeqCst)
    }

    fn blip(&self) -> StoreError {
        self.refused.fetch_add(1, SeqCst);
        StoreError::from(sqlx::Error::PoolTimedOut)
    }
}

#[async_trait::async_trait]
impl RunStore for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn insert_run(&self, run: &OperationRun, audit: &[AuditEntry]) -> Result<Inserted, StoreError> {
        if Some(self.inserts_seen.fetch_add(1, SeqCst) + 1) == self.failing_insert {
            return Err(self.blip());
        }
        self.inner.insert_run(run, audit).await
    }
    async fn insert_runs(&self, runs: &[(OperationRun, AuditEntry)]) -> Result<Vec<Inserted>, StoreError> {
        self.inner.insert_runs(runs).await
    }
    async fn update_batch(&self, updates: &[Update], now: DateTime<Utc>) -> Result<Vec<Vec<OperationRun>>, StoreError> {
        let finishes = updates.iter().any(|u| u.write.status() == Some(RunStatus::Completed));
        if finishes && self.finishes_to_fail.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(self.blip());
        }
        self.inner.update_batch(updates, now).await
    }
    async fn get_runs(&self, ids: &[Uuid]) -> Result<Vec<OperationRun>, StoreError> {
        self.inner.get_runs(ids).await
    }
    async fn update_runs(
        &self,
        ids: &[Uuid],
        guard: &Guard,
        change: &RunWrite,
        now: DateTime<Utc>,
        audit: Option<&AuditEntry>,
    ) -> Result<Vec<OperationRun>, StoreError> {
        self.inner.update_runs(ids, guard, change, now, audit).await
    }
    async fn update_runs_brief(
        &self,
        ids: &[Uuid],
        guard: &Guard,
        change: &RunWrite,
        now: DateTime<Utc>,
        audit: &AuditEntry,
    ) -> Result<Vec<Written>, StoreError> {
        self.inner.update_runs_brief(ids, guard, change, now, audit).await
    }
    async fn get_run(&self, id: Uuid) -> Result<Option<OperationRun>, StoreError> {
        self.inner.get_run(id).await
    }
    async fn active_run_for_key(&self, dedup_key: &str) -> Result<Option<OperationRun>, StoreError> {
        self.inner.active_run_for_key(dedup_key).await
    }
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<OperationRun>, StoreError> {
        self.inner.list_runs(filter).await
    }
    async fn count_runs(&self, filter: &RunFilter) -> Result<Vec<crate::store::RunCount>, StoreError> {
        self.inner.count_runs(filter).await
    }
    async fn find_stale(&self, query: &StaleQuery) -> Result<Vec<StaleRun>, StoreError> {
        self.inner.find_stale(query).await
    }
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.inner.append_audit(entry).await
    }
    async fn audit_for_run(&self, run_id: Uuid) -> Result<Vec<AuditEvent>, StoreError> {
        self.inner.audit_for_run(run_id).await
    }
    async fn list_audit(&self, filter: &crate::store::AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        self.inner.list_audit(filter).await
    }
    async fn prune_runs(
        &self,
        outcome: crate::RunOutcome,
        before: DateTime<Utc>,
        from: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<crate::store::PrunedPage, StoreError> {
        self.inner.prune_runs(outcome, before, from, limit).await
    }
    async fn count_prunable_runs(
        &self,
        outcome: crate::RunOutcome,
        before: DateTime<Utc>,
        cap: u64,
    ) -> Result<u64, StoreError> {
        self.inner.count_prunable_runs(outcome, before, cap).await
    }
    async fn prune_audit(&self, before: DateTime<Utc>, limit: u32, dry_run: bool) -> Result<u64, StoreError> {
        self.inner.prune_audit(before, limit, dry_run).await
    }
    async fn record_refusal(&self, run: &OperationRun, audit: &AuditEntry) -> Result<(OperationRun, bool), StoreError> {
        self.inner.record_refusal(run, audit).await
    }
    async fn close_refusals(&self, key: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.close_refusals(key, now).await
    }
    async fn claim_ready(&self, claim: &crate::ReadyClaim) -> Result<crate::ClaimedReady, StoreError> {
        self.inner.claim_ready(claim).await
    }
    async fn count_ready(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.count_ready(now).await
    }
    async fn wake_workers(&self) -> Result<(), StoreError> {
        self.inner.wake_workers().await
    }
    async fn wakeups(&self) -> Result<Box<dyn crate::Wakeups>, StoreError> {
        self.inner.wakeups().await
    }
}
