//! `oprun bench` on the embedded default: every run checked.

use super::*;

#[test]
fn bench_runs_the_real_path_and_checks_every_run() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let out = oprun(dir.path(), &["bench", "--runs", "60", "--concurrency", "8", "--dispatchers", "4", "--json"]);
    let v = json(&out);
    assert_eq!(v["check"]["runs_in_store"], 60, "{v}");
    assert_eq!((v["check"]["succeeded"].as_u64(), v["check"]["succeeded_on_attempt"].as_u64()), (Some(60), Some(1)));
    assert_eq!(v["check"]["operation_executions"], 60);
    assert_eq!(v["check"]["retries_scheduled"], 0);
    assert!(v["runs_per_second"].as_f64().unwrap() > 0.0);
    // The bare-queue baseline is a Postgres queue: on SQLite it is refused
    // before anything runs.
    let out = oprun(oprun_shared::testing::kept_dir("cli").path(), &["bench", "--runs", "10", "--baseline"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--baseline needs a Postgres store"));
    // A store that already holds other tenants is refused: the bench replaces access truth.
    let access = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml");
    let other = oprun_shared::testing::kept_dir("cli");
    assert!(oprun(other.path(), &["access", "apply", access]).status.success());
    let out = oprun(other.path(), &["bench", "--runs", "10"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scratch store"));
}

#[test]
fn bench_retry_once_runs_every_run_twice_and_checks_it_succeeded_on_its_second_attempt() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let out = oprun(dir.path(), &["bench", "--retry-once", "--runs", "40", "--concurrency", "8", "--json"]);
    let v = json(&out);
    assert_eq!(v["retry_once"], true, "{v}");
    assert_eq!(v["check"]["runs_in_store"], 40, "{v}");
    assert_eq!((v["check"]["succeeded"].as_u64(), v["check"]["succeeded_on_attempt"].as_u64()), (Some(40), Some(2)));
    assert_eq!(v["check"]["operation_executions"], 80, "{v}");
    assert_eq!(v["check"]["retries_scheduled"], 40, "{v}");
    // Each run's failure history names its first attempt.
    let listed = json(&oprun(dir.path(), &["runs", "list", "--workspace", "bench", "--limit", "100", "--json"]));
    let listed = listed.as_array().expect("a list of runs");
    assert_eq!(listed.len(), 40);
    for r in listed {
        let history = r["failure_summary"].as_array().expect("a failure summary");
        assert_eq!(history.len(), 1, "{r}");
        assert_eq!(history[0]["reason_code"], "provider.unavailable", "{r}");
        assert!(history[0]["message"].as_str().unwrap().starts_with("attempt 1 of 2"), "{r}");
    }
    let out = oprun(dir.path(), &["bench", "--retry-once", "--stale", "10"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--retry-once cannot be combined"));
}

#[test]
fn bench_truth_only_writes_and_checks_every_run_without_the_queue() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let out =
        oprun(dir.path(), &["bench", "--truth-only", "--runs", "70", "--batch", "32", "--dispatchers", "3", "--json"]);
    let v = json(&out);
    assert_eq!(v["mode"], "truth_only", "{v}");
    assert_eq!(v["check"]["runs_in_store"], 70, "{v}");
    assert_eq!(v["check"]["succeeded_first_attempt"], 70, "{v}");
    assert!(v["runs_per_second"].as_f64().unwrap() > 0.0);
    // The runs are in the store as the service finished them.
    let listed = json(&oprun(
        dir.path(),
        &["runs", "list", "--workspace", "bench", "--status", "completed", "--limit", "100", "--json"],
    ));
    let listed = listed.as_array().expect("a list of runs");
    assert_eq!(listed.len(), 70);
    assert!(listed.iter().all(|r| r["outcome"] == "succeeded" && r["attempt"] == 1), "{listed:?}");
    // It measures the truth alone: a queue-side option is a usage error.
    let out = oprun(dir.path(), &["bench", "--truth-only", "--baseline"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--truth-only cannot be combined"));
}
