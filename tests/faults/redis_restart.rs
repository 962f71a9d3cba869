//! Fault 2: a private Redis restarted without persistence under a running worker:
//! no run is lost.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oprun_shared::{Initiator, JobQueue, ReconcileFilter, ReconcileKind, RunOutcome, RunStatus};
use serde_json::json;

use super::{audit_trail, count_action, dispatch, free_port, request, runs};
use crate::common;
use crate::common::{Env, Stack};

/// A private `redis-server` (no RDB, no AOF) in a temp dir, killed by pid
/// on drop.
struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let mut r = Self { port: free_port(), dir: tempfile::tempdir().unwrap(), child: None };
        r.spawn();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir", self.dir.path().to_str().unwrap()])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start redis-server (is it on PATH?)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ping() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                panic!("redis-server exited ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "the private redis-server did not answer PING");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, by pid.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_without_persistence_loses_no_run() {
    let started = Instant::now();
    let mut redis = PrivateRedis::start();
    let e = Env::with_redis_url(Stack::PostgresRedis, &redis.url()).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let env = if i % 2 == 0 { "contoso-prod" } else { "contoso-dev" };
        ids.push(dispatch(&e, request("test.fanout", env, None, json!({ "n": i }))).await.id);
    }
    assert_eq!(e.queue.depth().await.unwrap(), Some(50), "every job is in Redis");

    // Redis dies and comes back empty on the same port.
    tokio::task::block_in_place(|| {
        redis.kill9();
        redis.spawn();
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while e.queue.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the queue's connection never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(e.queue.depth().await.unwrap(), Some(0), "the restarted Redis lost every job");
    assert!(runs(&e, &ids).await.iter().all(|r| r.status == RunStatus::Queued), "the run rows are the truth");

    // Now the reconciler does nothing yet: the runs are not stale.
    let oncall = Initiator::user("oncall-1");
    let early =
        oprun_scheduler::reconcile_and_push(&e.dispatcher, &oncall, &ReconcileFilter::default(), false).await.unwrap();
    assert!(early.actions.is_empty(), "{early:?}");

    // Past queued_stale_after (test.fanout has the 5 min default) it pushes
    // every job again, once.
    let stale = common::catalog().get("test.fanout").unwrap().queued_stale_after.as_secs() as i64;
    let report = common::reconcile_later(&e, stale + 1).await;
    assert_eq!(report.count(ReconcileKind::Repush), 50, "{report:?}");
    assert_eq!(report.actions.len(), 50, "{report:?}");
    assert_eq!(e.queue.depth().await.unwrap(), Some(50), "the jobs are back");

    let worker = e.start_worker(e.runner("after-redis-restart"));
    for id in &ids {
        e.until_completed(*id, 60).await;
    }
    assert!(worker.is_running(), "the worker is still up");
    worker.stop().await;
    for run in runs(&e, &ids).await {
        assert_eq!((run.outcome, run.attempt), (RunOutcome::Succeeded, 1), "{run:?}");
        let trail = audit_trail(&e, run.id).await;
        assert_eq!(count_action(&trail, "run.repush"), 1, "{trail:?}");
        assert_eq!(count_action(&trail, "run.claim"), 1, "{trail:?}");
        assert_eq!(count_action(&trail, "run.complete"), 1, "{trail:?}");
    }
    assert_eq!(e.calls(), 50, "each run executed exactly once");
    println!("redis restart: 50 jobs lost, 50 re-pushed, 50 runs succeeded once, in {:?}", started.elapsed());
}
