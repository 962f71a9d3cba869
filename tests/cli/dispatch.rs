//! Dispatch from the CLI: bad input exits 2 and writes nothing; a refusal exits 3 and is audited.

use super::*;

#[test]
fn bad_dispatch_input_exits_2_and_writes_nothing() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    let out = oprun(p, &["access", "apply", "/nonexistent/access.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/access.toml"));
    // Load the demo's access truth into a fresh store.
    let access = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml");
    assert!(oprun(p, &["access", "apply", access]).status.success());
    let base = ["dispatch", "demo.inventory_sync", "--workspace", "contoso", "--environment", "contoso-prod"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["dispatch", "no.such.op", "--workspace", "contoso", "--as", "ops-user-1"],
            "unknown operation 'no.such.op'",
        ),
        ([&base[..], &["--as", "ops-user-1", "--params", "{not json"]].concat(), "--params is not JSON"),
        ([&base[..], &["--as", "ops-user-1", "--params", "[1]"]].concat(), "--params must be a JSON object"),
        ([&base[..], &["--as", "nobody"]].concat(), "unknown actor 'nobody'"),
        (vec!["dispatch", "demo.inventory_sync", "--workspace", "contoso", "--as", "ops-user-1"], "environment"),
        (vec!["dispatch", "demo.inventory_sync", "--as", "ops-user-1"], "--workspace"),
        ([&base[..], &["--as", "ops-user-1", "--params", r#"{"client_secret":"x"}"#]].concat(), "client_secret"),
        ([&base[..], &["--as", "ops-user-1", "--in", "10years"]].concat(), "at most a year"),
        ([&base[..], &["--as", "ops-user-1", "--in", "soon"]].concat(), "--in"),
        ([&base[..], &["--as", "ops-user-1", "--at", "tomorrow"]].concat(), "--at"),
        ([&base[..], &["--as", "ops-user-1", "--at", "9999-01-01T00:00:00Z"]].concat(), "at most a year"),
        ([&base[..], &["--as", "ops-user-1", "--at", "2026-12-05T06:00:00Z", "--in", "1h"]].concat(), "cannot be used"),
    ];
    for (args, needle) in cases {
        let err = usage_error(p, &args, &format!("{args:?}"));
        assert!(err.contains(needle), "{args:?}: expected '{needle}' in: {err}");
    }
    assert!(runs(p).is_empty(), "nothing was written");
    let bad = oprun(p, &["runs", "list", "--status", "sleeping"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sleeping"));
    let bad = oprun(p, &["runs", "show", "not-a-uuid"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_refused_dispatch_exits_3_with_the_reason_and_leaves_an_audit_row() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    let access = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml");
    assert!(oprun(p, &["access", "apply", access]).status.success());
    // The viewer may not run the sync.
    let out = oprun(
        p,
        &[
            "dispatch",
            "demo.inventory_sync",
            "--workspace",
            "contoso",
            "--environment",
            "contoso-prod",
            "--as",
            "viewer-1",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("execution.capability_missing"), "{err}");
    assert!(runs(p).is_empty());
    // The audit row is in the store.
    let db = p.join("oprun.db");
    let url = format!("sqlite://{}", db.display());
    let refused: i64 = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'run.dispatch_refused' \
             AND actor_id = 'viewer-1' AND reason_code = 'execution.capability_missing'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap()
    });
    assert_eq!(refused, 1);
    // And an allowed one is written and queued.
    let out = oprun(
        p,
        &[
            "dispatch",
            "demo.inventory_sync",
            "--workspace",
            "contoso",
            "--environment",
            "contoso-prod",
            "--as",
            "ops-user-1",
            "--json",
        ],
    );
    let v = json(&out);
    assert_eq!(v["result"], "dispatched");
    assert_eq!(v["run"]["status"], "queued");
    assert_eq!(runs(p).len(), 1);
}

/// `--in` dispatches a queued run that may start only after the delay.
#[test]
fn dispatch_in_writes_a_queued_run_available_after_the_delay() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    let access = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml");
    assert!(oprun(p, &["access", "apply", access]).status.success());
    let before = chrono::Utc::now();
    let args = ["dispatch", "demo.inventory_sync", "--workspace", "contoso", "--environment", "contoso-prod"];
    let out = oprun(p, &[&args[..], &["--as", "ops-user-1", "--in", "2h", "--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["run"]["status"], "queued", "{v}");
    let at: chrono::DateTime<chrono::Utc> = v["run"]["available_at"].as_str().unwrap().parse().unwrap();
    assert!(at >= before + chrono::Duration::hours(2) && at <= chrono::Utc::now() + chrono::Duration::hours(2), "{at}");
}
