//! A worker process killed with SIGKILL mid-run: its lease expires, the
//! reconciler requeues the run (attempt 2, checkpoint kept), and another
//! worker finishes it from the checkpoint — on Postgres + Redis and on SQLite.
//! A worker process stopped with SIGTERM mid-run: the run completes within
//! `worker.shutdown_grace`, or (a grace too short) is left running for lease
//! expiry and the reconciler, and completes after; the process exits 0.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Env, Reaped, Stack, exit_within};
use oprun_shared::{OperationRun, ReconcileKind, RunOutcome, RunStatus};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_oprun");

async fn a_killed_worker_s_run_is_requeued_and_finished_by_another_from_its_checkpoint(stack: Stack) {
    let e = Env::new(stack).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("oprun.toml");
    std::fs::write(&cfg, common::binary_config(&e, dir.path(), "http://127.0.0.1:9")).unwrap();
    let req = common::prod_request("test.slow", json!({"pages": 40, "page_size": 5, "page_delay_ms": 100}));
    let run = e.dispatch_new(req).await;
    let mut child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "worker"])
        .env_remove("OPRUN_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start oprun worker");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let first_owner = loop {
        let now = e.service.get(run.id).await.unwrap();
        if now.summary_counts.get("pages") >= 3 {
            break now.lease_owner.clone().expect("running with a lease");
        }
        assert!(tokio::time::Instant::now() < deadline, "the worker process never progressed: {now:?}");
        assert!(child.try_wait().unwrap().is_none(), "the worker process exited early");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // SIGKILL: no shutdown, no completion, the lease just stops being renewed.
    child.kill().unwrap();
    child.wait().unwrap();
    let stranded = e.service.get(run.id).await.unwrap();
    assert_eq!(stranded.status, RunStatus::Running);
    let pages_at_kill = stranded.summary_counts.get("pages");

    // The reconciler, at a time past lease expiry plus grace.
    let report = common::reconcile_later(&e, 3 + 10 + 1).await;
    assert_eq!(report.actions.len(), 1, "{report:?}");
    assert_eq!(report.actions[0].kind, ReconcileKind::Requeued);
    let requeued = e.service.get(run.id).await.unwrap();
    assert_eq!((requeued.status, requeued.attempt), (RunStatus::Queued, 2));

    let worker = e.start_worker(e.runner("second-worker"));
    let done = e.until_completed(run.id, 60).await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    assert_eq!(done.attempt, 2);
    assert_eq!(done.summary_counts.get("pages"), 40, "resumed from the checkpoint: no page counted twice");
    assert!(pages_at_kill >= 3);
    let actions: Vec<String> = e.service.audit(run.id).await.unwrap().into_iter().map(|a| a.entry.action).collect();
    assert!(actions.contains(&"run.requeue".to_string()), "{actions:?}");
    let claims = e.service.audit(run.id).await.unwrap().into_iter().filter(|a| a.entry.action == "run.claim");
    let owners: Vec<String> = claims.map(|a| a.entry.actor.id).collect();
    assert_eq!(owners.len(), 2);
    assert!(owners[0].contains(&first_owner) && owners[1].contains("second-worker"), "{owners:?}");
}

/// A `test.slow` run of `pages` pages, `page_delay_ms` each.
async fn dispatch_slow(e: &Env, pages: u64, page_delay_ms: u64) -> OperationRun {
    let req =
        common::prod_request("test.slow", json!({"pages": pages, "page_size": 5, "page_delay_ms": page_delay_ms}));
    e.dispatch_new(req).await
}

/// Start `oprun worker` with `worker.shutdown_grace = grace`, wait until
/// `run` has counted `pages` pages, and SIGTERM it. Returns the process and
/// when the signal was sent.
async fn sigterm_mid_run(
    e: &Env,
    dir: &std::path::Path,
    grace: &str,
    run: &OperationRun,
    pages: u64,
) -> (Reaped, tokio::time::Instant) {
    let cfg = dir.join("oprun.toml");
    let text = common::binary_config(e, dir, "http://127.0.0.1:9");
    assert!(text.contains("shutdown_grace = \"1s\"\n"), "binary_config sets the grace");
    std::fs::write(&cfg, text.replace("shutdown_grace = \"1s\"\n", &format!("shutdown_grace = \"{grace}\"\n")))
        .unwrap();
    let log = common::process_log(&dir.join("worker.log"), "crash-sigterm-worker");
    let mut child = Reaped(common::spawn_oprun("worker", &cfg, &log, "info"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = e.service.get(run.id).await.unwrap();
        if now.summary_counts.get("pages") >= pages {
            assert_eq!(now.status, RunStatus::Running, "{now:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the worker process never progressed: {now:?}");
        assert!(child.0.try_wait().unwrap().is_none(), "the worker process exited early (log: {})", log.display());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let sent = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(sent.success(), "SIGTERM the worker");
    (child, tokio::time::Instant::now())
}

/// SIGTERM with a run mid-collection and a grace (30 s) longer than the
/// rest of the run (~2 s): the process stops fetching, lets the run finish,
/// and exits 0 with the run succeeded on its first attempt, every page
/// counted, before the grace is up.
async fn a_sigtermed_worker_finishes_its_run_within_the_shutdown_grace_and_exits_0(stack: Stack) {
    let e = Env::new(stack).await;
    let dir = tempfile::tempdir().unwrap();
    let run = dispatch_slow(&e, 20, 100).await;
    let (mut child, at) = sigterm_mid_run(&e, dir.path(), "30s", &run, 3).await;
    let status = exit_within(&mut child, 60).await;
    let took = at.elapsed();
    let done = e.service.get(run.id).await.unwrap();
    assert!(status.success(), "the worker exited with {status} after SIGTERM: {done:?}");
    assert!(took < Duration::from_secs(30), "it exited {took:?} after SIGTERM, at the grace's end: {done:?}");
    assert_eq!((done.status, done.outcome, done.attempt), (RunStatus::Completed, RunOutcome::Succeeded, 1), "{done:?}");
    assert_eq!(done.summary_counts.get("pages"), 20, "{done:?}");
}

/// SIGTERM with a run mid-collection and a grace (1 s) shorter than the
/// rest of the run (~10 s): the process exits 0 when the grace is up,
/// leaving the run running (not failed, not lost); past its lease the
/// reconciler requeues it and another worker finishes it from its
/// checkpoint.
async fn a_run_outliving_the_shutdown_grace_is_requeued_after_its_lease_and_completes(stack: Stack) {
    let e = Env::new(stack).await;
    let dir = tempfile::tempdir().unwrap();
    let run = dispatch_slow(&e, 40, 250).await;
    let (mut child, at) = sigterm_mid_run(&e, dir.path(), "1s", &run, 2).await;
    let status = exit_within(&mut child, 60).await;
    assert!(status.success(), "the worker exited with {status} after SIGTERM");
    assert!(at.elapsed() < Duration::from_secs(6), "exited {:?} after SIGTERM, the grace is 1 s", at.elapsed());
    let left = e.service.get(run.id).await.unwrap();
    assert_eq!((left.status, left.attempt), (RunStatus::Running, 1), "left for lease expiry: {left:?}");
    let pages_at_exit = left.summary_counts.get("pages");
    assert!((2..40).contains(&pages_at_exit), "{left:?}");
    // test.slow's lease is 3 s; the reconciler's grace 10 s.
    let report = common::reconcile_later(&e, 3 + 10 + 1).await;
    assert_eq!(report.count(ReconcileKind::Requeued), 1, "{report:?}");
    let worker = e.start_worker(e.runner("second-worker"));
    let done = e.until_completed(run.id, 60).await;
    worker.stop().await;
    assert_eq!((done.outcome, done.attempt), (RunOutcome::Succeeded, 2), "{done:?}");
    assert_eq!(done.summary_counts.get("pages"), 40, "resumed from the checkpoint: no page counted twice");
}

both_stacks!(
    a_killed_worker_s_run_is_requeued_and_finished_by_another_from_its_checkpoint,
    a_sigtermed_worker_finishes_its_run_within_the_shutdown_grace_and_exits_0,
    a_run_outliving_the_shutdown_grace_is_requeued_after_its_lease_and_completes,
);
