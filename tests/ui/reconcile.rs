//! On-call in the dashboard: a run whose worker died (SIGKILL mid-run) is
//! stale; the reconcile page's dry run shows what would change and changes
//! nothing, then apply requeues it and a live worker finishes it.

use super::*;

/// The demo's operation with a short lease, no schedules, and the automatic
/// reconciler all but off (an hour apart), so on-call is the one who acts.
fn config(dir: &Path) -> String {
    let access = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml")).unwrap();
    std::fs::write(dir.join("access.toml"), access).unwrap();
    let text = r#"
access_file = "access.toml"
capabilities = ["inventory.sync", "report.build"]

[store]
url = "sqlite://oprun.db"

[worker]
concurrency = 2

[scheduler]
tick = "1s"
reconcile_interval = "1h"
lease_grace = "1s"

[operations."demo.inventory_sync"]
kind = "demo"
provider = "demo"
capability = "inventory.sync"
scope = "environment"
lease = "15s"
heartbeat = "1s"
max_attempts = 3
resumable = true
"#;
    let path = dir.join("oprun.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn show(dir: &Path, cfg: &str, id: &str) -> Value {
    json_of(&oprun(dir, &["--config", cfg, "runs", "show", id, "--json"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_call_reconciles_a_stale_run_with_a_dry_run_then_apply() {
    let dir = oprun_shared::testing::kept_dir("ui");
    let cfg = config(dir.path());
    let first = Up::start(dir.path(), Some(&cfg)).await;
    let params = r#"{"pages": 40, "page_size": 5, "page_delay_ms": 250}"#;
    let dispatched = json_of(&oprun(
        dir.path(),
        &[
            "--config",
            &cfg,
            "dispatch",
            "demo.inventory_sync",
            "--workspace",
            "contoso",
            "--environment",
            "contoso-prod",
            "--as",
            "ops-user-1",
            "--params",
            params,
            "--json",
        ],
    ));
    let id = dispatched["run"]["id"].as_str().or(dispatched["id"].as_str()).expect("the run id").to_string();
    until(30, "the run is running", || (show(dir.path(), &cfg, &id)["status"] == "running").then_some(())).await;
    // Its worker dies mid-run: the run stays running, its lease held.
    drop(first);
    let up = Up::start(dir.path(), Some(&cfg)).await;
    assert_eq!(show(dir.path(), &cfg, &id)["status"], "running");

    let b = Browser::start().await;
    b.goto(&up.url("/ui/reconcile")).await;
    b.sign_in(&up, &token(dir.path(), Some(&cfg), "ops-user-1")).await;
    assert_eq!(b.location().await, "/ui/reconcile");
    // The dry run shows the run once its lease (and grace) has passed.
    let mut shown = false;
    for _ in 0..80 {
        b.click("#dry-run").await;
        if b.count(&format!("#reconcile-report a[href='/ui/runs/{id}']")).await == 1 {
            shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(shown, "the dry run never listed the stale run");
    assert_eq!(b.text("#reconcile-report h2").await, "Would change");
    assert!(b.text("#reconcile-report").await.contains("running → queued"), "{}", b.text("#reconcile-report").await);
    b.screenshot("reconcile-dry-run").await;
    assert_eq!(show(dir.path(), &cfg, &id)["status"], "running", "a dry run changes nothing");

    b.click("#apply").await;
    assert_eq!(b.text("#reconcile-report h2").await, "Changed");
    assert_eq!(b.count(&format!("#reconcile-report a[href='/ui/runs/{id}']")).await, 1);
    b.screenshot("reconcile-applied").await;
    // Requeued with its next attempt; the live worker finishes it.
    let done = until(60, "the reconciled run succeeds", || {
        let r = show(dir.path(), &cfg, &id);
        (r["status"] == "completed").then_some(r)
    })
    .await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    b.goto(&up.url(&format!("/ui/runs/{id}"))).await;
    let audit = b.text("#audit").await;
    assert!(audit.contains("run.requeue") && audit.contains("user:ops-user-1"), "{audit}");
    b.close().await;
}
