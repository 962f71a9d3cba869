//! Fault 3: a private Postgres restarted while workers run: they recover without a
//! panic and every run completes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oprun_shared::{OperationRun, ReconcileKind, RunOutcome, RunStatus};
use serde_json::json;
use uuid::Uuid;

use super::{audit_trail, count_action, dispatch, free_port, request, runs};
use crate::common;
use crate::common::Env;

/// The directory of the Postgres binaries: `OPRUN_TEST_PG_BIN` (the test
/// command exports the ones it found, whatever the major). Under CI a missing
/// variable fails the test; elsewhere the newest /usr/lib/postgresql/*/bin.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("OPRUN_TEST_PG_BIN").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "OPRUN_TEST_PG_BIN is not set (CI={:?}): run the tests with scripts/test.sh, which exports the \
        directory of the Postgres binaries it found",
        std::env::var("CI").unwrap_or_default()
    );
    let major = |p: &PathBuf| -> Vec<u32> {
        let name = p.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name.split('.').map(|n| n.parse().unwrap_or(0)).collect()
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort_by_key(major);
    found.pop().expect(
        "OPRUN_TEST_PG_BIN is not set and no /usr/lib/postgresql/*/bin/initdb exists: install Postgres \
        or run the tests with scripts/test.sh",
    )
}

const PG_PAGES: u64 = 6;

const PG_RUNS: usize = 48;

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// A private Postgres (trust auth, user `oprun`) in a temp dir, stopped by
/// pid on drop. As root, it runs as the `postgres` system user.
struct PrivatePostgres {
    port: u16,
    dir: tempfile::TempDir,
    as_root: bool,
    child: Option<Child>,
}

impl PrivatePostgres {
    fn command(&self, program: &str) -> Command {
        let path = pg_bin().join(program);
        if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn pg_dir(&self) -> PathBuf {
        self.dir.path().join("pg")
    }

    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let as_root = is_root();
        let pg = Self { port: free_port(), dir, as_root, child: None };
        std::fs::create_dir(pg.pg_dir()).unwrap();
        if as_root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(pg.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let has_user = Command::new("id").arg("postgres").output().is_ok_and(|o| o.status.success());
            if !has_user {
                let ok = Command::new("useradd").args(["--system", "--no-create-home", "postgres"]).status();
                assert!(ok.is_ok_and(|s| s.success()), "cannot create the postgres system user");
            }
            let ok = Command::new("chown").arg("postgres").arg(pg.pg_dir()).status();
            assert!(ok.is_ok_and(|s| s.success()), "chown postgres");
        }
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(pg.pg_dir().join("data"))
            .args(["-U", "oprun", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = pg;
        pg.spawn();
        pg
    }

    fn url(&self) -> String {
        format!("postgres://oprun@127.0.0.1:{}/postgres", self.port)
    }

    fn spawn(&mut self) {
        let log_path = self.dir.path().join("postgres.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.pg_dir().join("data"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-k"])
            .arg(self.pg_dir())
            .args(["-c", "max_connections=100"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(pg_bin().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("postgres exited ({status}):\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "the private Postgres did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The postmaster's pid (runuser forks, so it is not our child's).
    fn postmaster_pid(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.pg_dir().join("data/postmaster.pid")).ok()?;
        text.lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty())
    }

    /// Signal the postmaster and wait for it to exit (SIGKILL after 20 s).
    fn stop_with(&mut self, signal: &str) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = self.postmaster_pid() {
            let _ = Command::new("kill").args([signal, &pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                if let Some(pid) = self.postmaster_pid() {
                    let _ = Command::new("kill").args(["-KILL", &pid]).status();
                }
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An immediate shutdown (SIGQUIT, `pg_ctl stop -m immediate`): every
    /// connection dies at once, no checkpoint, crash recovery at the next start.
    fn crash(&mut self) {
        self.stop_with("-QUIT");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop_with("-INT");
    }
}

/// Poll the runs until `done` holds, reconciling as on-call once the
/// restarted Postgres has been up for more than one lease (see below).
async fn settle(
    e: &Env,
    ids: &[Uuid],
    worker: &common::WorkerHandle,
    restarted: Option<Instant>,
    requeued: &mut usize,
    what: &str,
    done: impl Fn(&[OperationRun]) -> bool,
) -> Vec<OperationRun> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(worker.is_running(), "the worker task stopped or panicked ({what})");
        // Runs that hit an outage mid-write were given up by the worker
        // (their leases expire: lease 3 s); the reconciler moves them on. Its
        // clock is 9 s ahead, so with its 10 s grace it takes runs whose lease
        // expired over 1 s ago — never a live run, whose heartbeat (1 s)
        // keeps its lease ≥ 2 s ahead once it has renewed after the restart
        // (hence the wait of more than one lease first).
        if restarted.is_some_and(|t| t.elapsed() > Duration::from_secs(4)) {
            let report = common::reconcile_later(e, 9).await;
            assert!(report.actions.iter().all(|a| a.kind == ReconcileKind::Requeued), "{report:?}");
            *requeued += report.count(ReconcileKind::Requeued);
        }
        let now = runs(e, ids).await;
        if done(&now) {
            return now;
        }
        if Instant::now() >= deadline {
            let stuck: Vec<String> = now
                .iter()
                .filter(|r| r.status != RunStatus::Completed)
                .map(|r| format!("{} {} attempt {} lease {:?}", r.id, r.status, r.attempt, r.lease_expires_at))
                .collect();
            panic!("timed out waiting for {what}; {} runs not completed:\n{}", stuck.len(), stuck.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(crate) fn completed(runs: &[OperationRun]) -> usize {
    runs.iter().filter(|r| r.status == RunStatus::Completed).count()
}

pub(crate) fn running(runs: &[OperationRun]) -> usize {
    runs.iter().filter(|r| r.status == RunStatus::Running).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_while_workers_run_recovers_without_panic() {
    let started = Instant::now();
    let mut pg = PrivatePostgres::start();
    let db = common::test_store_at(&pg.url()).await;
    let e = Env::with_store(db).await;
    let params = json!({ "pages": PG_PAGES, "page_size": 5, "page_delay_ms": 150 });
    let mut ids = Vec::new();
    for i in 0..PG_RUNS {
        // test.slow deduplicates per scope: a target per run.
        let target = format!("t{i:02}");
        ids.push(dispatch(&e, request("test.slow", "contoso-prod", Some(&target), params.clone())).await.id);
    }
    let runner = e.runner("pg-restart-worker");
    let stats = runner.stats().clone();
    let worker = e.start_worker_with(runner, 8);

    // Two outages (every connection dies at once, nothing answers):
    // - ~2 s: shorter than the pool's acquire timeout (10 s; sqlx retries a
    //   refused connection until then), so most writes just wait and carry
    //   on; a statement in flight at the crash fails;
    // - 12 s: longer, so every write waiting in the pool fails too: the
    //   worker gives those runs up (or sends their jobs back, for claims)
    //   and the reconciler must requeue them.
    let mut requeued = 0;
    let mut restarted = None;
    let mut outages = Vec::new();
    for (down, done_first) in [(Duration::from_secs(2), 8), (Duration::from_secs(12), PG_RUNS * 3 / 5)] {
        let what = format!("{done_first} runs completed and some running");
        let before = settle(&e, &ids, &worker, restarted, &mut requeued, &what, |r| {
            completed(r) >= done_first && running(r) > 0
        })
        .await;
        tokio::task::block_in_place(|| pg.crash());
        let crashed = Instant::now();
        tokio::time::sleep(down).await;
        assert!(worker.is_running(), "the worker survived the database going away");
        tokio::task::block_in_place(|| pg.spawn());
        restarted = Some(Instant::now());
        outages.push(format!(
            "down {:?} (crash recovery included) with {} done and {} running at the crash",
            crashed.elapsed(),
            completed(&before),
            running(&before)
        ));
    }
    let after =
        settle(&e, &ids, &worker, restarted, &mut requeued, "every run completed", |r| completed(r) == r.len()).await;
    assert!(worker.is_running(), "the worker task is still up");
    worker.stop().await;

    let stats = stats.snapshot();
    assert_eq!(stats.panics, 0, "{stats:?}");
    let mut attempts: BTreeMap<i32, usize> = BTreeMap::new();
    for run in &after {
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(run.outcome, RunOutcome::Succeeded, "{run:?}");
        let c = &run.summary_counts;
        assert_eq!((c.get("pages"), c.get("total")), (PG_PAGES, PG_PAGES * 5), "no page counted twice: {run:?}");
        assert_eq!(count_action(&audit_trail(&e, run.id).await, "run.complete"), 1);
        *attempts.entry(run.attempt).or_default() += 1;
    }
    println!(
        "postgres restarts: {}; {requeued} runs requeued by the reconciler; runs by attempt {attempts:?}; \
         worker {stats:?}; total {:?}",
        outages.join("; "),
        started.elapsed()
    );
}
