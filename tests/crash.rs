//! A worker process killed with SIGKILL mid-run: its lease expires, the
//! reconciler requeues the run (attempt 2, checkpoint kept), and another
//! worker finishes it from the checkpoint — on Postgres + Redis and on SQLite.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Env, Stack};
use oprun_shared::{DispatchRequest, Initiator, ReconcileKind, RunOutcome, RunStatus, Scope, SourceSurface};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_oprun");

async fn a_killed_worker_s_run_is_requeued_and_finished_by_another_from_its_checkpoint(stack: Stack) {
    let e = Env::new(stack).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("oprun.toml");
    std::fs::write(&cfg, common::binary_config(&e, dir.path(), "http://127.0.0.1:9")).unwrap();
    let req = DispatchRequest {
        operation: "test.slow".into(),
        scope: Scope {
            workspace_id: "contoso".into(),
            environment_id: Some("contoso-prod".into()),
            ..Scope::default()
        },
        initiator: Initiator::user("ops-user-1"),
        source: SourceSurface::Cli,
        context: json!({}),
        params: json!({"pages": 40, "page_size": 5, "page_delay_ms": 100}),
    };
    let run = match e.dispatcher.dispatch(req).await.unwrap() {
        oprun_scheduler::DispatchOutcome::Dispatched { run, .. } => run,
        other => panic!("{other:?}"),
    };
    let mut child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "worker"])
        .env_remove("OPRUN_DATABASE_URL")
        .env_remove("OPRUN_QUEUE_URL")
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

both_stacks!(a_killed_worker_s_run_is_requeued_and_finished_by_another_from_its_checkpoint);
