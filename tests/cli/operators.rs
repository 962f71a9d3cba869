//! `up` on the embedded default, and what operators do from the CLI (with and without `--as`).

use super::*;

#[test]
fn up_on_the_embedded_default_shows_succeeded_and_blocked_runs_with_guidance() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let mut up = Command::new(BIN)
        .arg("up")
        .current_dir(dir.path())
        .env_remove("OPRUN_CONFIG")
        .env_remove("OPRUN_DATABASE_URL")
        .env("OPRUN_API_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start oprun up");
    let deadline = Instant::now() + Duration::from_secs(90);
    // Also wait for a fabrikam run (its report every 30 s), so that the
    // viewer's list below has another tenant's run to leave out.
    let (succeeded, blocked) = loop {
        std::thread::sleep(Duration::from_secs(1));
        if let Ok(Some(status)) = up.try_wait() {
            panic!("oprun up exited early ({status}); its log is above");
        }
        if !dir.path().join("oprun.db").exists() {
            continue;
        }
        let all = runs(dir.path());
        let find = |outcome: &str| all.iter().find(|r| r["outcome"] == outcome).cloned();
        let fabrikam = all.iter().any(|r| r["workspace_id"] == "fabrikam");
        if let (Some(s), Some(b), true) = (find("succeeded"), find("blocked"), fabrikam) {
            break (s, b);
        }
        assert!(Instant::now() < deadline, "no succeeded, blocked and fabrikam runs after 90s: {all:?}");
    };
    // Stop it as an operator would: SIGTERM, then it exits cleanly.
    let pid = up.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = up.try_wait().unwrap() {
            break s;
        }
        assert!(stopped.elapsed() < Duration::from_secs(40), "oprun up did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "oprun up exit status after SIGTERM: {status}");

    assert_eq!(succeeded["status"], "completed");
    assert_eq!(succeeded["initiator"]["kind"], "schedule");
    assert_eq!(succeeded["initiator"]["id"], "svc-scheduler");
    assert_eq!(succeeded["source_surface"], "scheduler");
    assert!(succeeded["summary_counts"]["total"].as_u64().unwrap() > 0, "{succeeded}");
    assert_eq!(blocked["reason_code"], "execution.environment_not_operable");
    assert_eq!(blocked["environment_id"], "contoso-lab");

    let id = blocked["id"].as_str().unwrap();
    let shown = json(&oprun(dir.path(), &["runs", "show", id, "--json"]));
    assert_eq!(shown["guidance"]["technical_details"]["reason_code"], "execution.environment_not_operable", "{shown}");
    assert!(!shown["guidance"]["primary_action"]["key"].as_str().unwrap().is_empty());
    // As the README shows: whoever may fix it (the local administrator
    // holds access.manage) is told to restore the environment …
    assert_eq!(shown["guidance"]["primary_action"]["key"], "restore_environment", "{shown}");
    let text = oprun(dir.path(), &["runs", "show", id]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("guidance") && text.contains("execution.environment_not_operable"), "{text}");
    assert!(text.contains("Make the environment operable again, then retry (restore_environment)"), "{text}");
    // … the viewer (runs.view only) to ask an admin, and is offered nothing it cannot do.
    let as_viewer = json(&oprun(dir.path(), &["runs", "show", id, "--json", "--as", "viewer-1"]));
    assert_eq!(as_viewer["guidance"]["primary_action"]["key"], "contact_admin", "{as_viewer}");
    let text = oprun(dir.path(), &["runs", "show", id, "--as", "viewer-1"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(
            "Ask a workspace admin to make the environment operable again, then retry the run (contact_admin)"
        ),
        "{text}"
    );
    assert!(!text.contains("(restore_environment)") && !text.contains("(retry)"), "{text}");
    // The viewer sees exactly the contoso runs; fabrikam's do not exist for it.
    let all = runs(dir.path());
    let ids = |list: &[Value]| -> Vec<String> { list.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect() };
    let contoso: Vec<Value> = all.iter().filter(|r| r["workspace_id"] == "contoso").cloned().collect();
    assert!(!contoso.is_empty() && contoso.len() < all.len(), "contoso and fabrikam runs: {all:?}");
    let seen = json(&oprun(dir.path(), &["runs", "list", "--json", "--limit", "1000", "--as", "viewer-1"]));
    assert!(seen.as_array().unwrap().iter().all(|r| r["workspace_id"] == "contoso"), "{seen}");
    assert_eq!(ids(seen.as_array().unwrap()), ids(&contoso), "{seen}");
}

#[test]
fn operators_cancel_retry_reconcile_and_manage_tokens_from_the_cli() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    let access = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml");
    assert!(oprun(p, &["access", "apply", access]).status.success());
    let scope = ["--workspace", "contoso", "--environment", "contoso-prod"];
    let out = oprun(p, &[&["dispatch", "demo.inventory_sync"][..], &scope, &["--as", "ops-user-1", "--json"]].concat());
    let id = json(&out)["run"]["id"].as_str().unwrap().to_string();
    // The viewer sees it but may not cancel it: refused, exit 3.
    let out = oprun(p, &["runs", "cancel", &id, "--as", "viewer-1"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    // An actor without runs.view there gets "not found", as for an unknown id.
    let out = oprun(p, &["runs", "show", &id, "--as", "svc-scheduler", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let hidden = String::from_utf8_lossy(&out.stderr).replace(&id, "ID");
    let unknown = uuid_like();
    let out = oprun(p, &["runs", "show", &unknown, "--as", "svc-scheduler"]);
    assert_eq!(hidden, String::from_utf8_lossy(&out.stderr).replace(&unknown, "ID"), "same message");
    let cancelled = json(&oprun(p, &["runs", "cancel", &id, "--as", "ops-user-1", "--json"]));
    assert_eq!(cancelled["result"], "cancelled", "{cancelled}");
    // A cancelled run is not retryable: refused with the reason.
    let out = oprun(p, &["runs", "retry", &id, "--as", "ops-user-1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    // On-call reconcile: the viewer may not; the operator may (dry run, nothing stale).
    assert_eq!(oprun(p, &["reconcile", "--dry-run", "--as", "viewer-1"]).status.code(), Some(3));
    let report = json(&oprun(p, &["reconcile", "--dry-run", "--workspace", "contoso", "--as", "ops-user-1", "--json"]));
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["actions"], serde_json::json!([]));
    // Tokens: printed once, stored hashed, revocable.
    let created = json(&oprun(p, &["token", "create", "--actor", "ops-user-1", "--expires-in", "1h", "--json"]));
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with("oprun_"));
    let raw = std::fs::read(p.join("oprun.db")).unwrap();
    let wal = std::fs::read(p.join("oprun.db-wal")).unwrap_or_default();
    let secret = &token[token.len() - 32..];
    for bytes in [&raw, &wal] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the token itself is not stored");
    }
    let id = created["id"].as_str().unwrap();
    assert!(oprun(p, &["token", "revoke", id]).status.success());
    assert_eq!(oprun(p, &["token", "revoke", id]).status.code(), Some(2), "already revoked");
    assert_eq!(oprun(p, &["token", "create", "--actor", "nobody"]).status.code(), Some(2));
    assert_eq!(oprun(p, &["token", "create", "--actor", "ops-user-1", "--expires-in", "soon"]).status.code(), Some(2));
}

#[test]
fn without_as_the_cli_acts_and_audits_as_the_local_administrator() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    let access = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml");
    assert!(oprun(p, &["access", "apply", access]).status.success());
    // --help says who acts without --as.
    for args in [&["reconcile", "--help"][..], &["runs", "list", "--help"], &["runs", "show", "--help"]] {
        let help = oprun(p, args);
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains("local administrator") && text.contains("user:local-admin"), "{args:?}: {text}");
    }
    // Starting and changing runs always names an actor of the access truth:
    // it is authorized now and again when the run executes.
    for args in [
        &["dispatch", "demo.inventory_sync", "--workspace", "contoso", "--environment", "contoso-prod"][..],
        &["runs", "retry", "01a20f3e-0000-7000-8000-000000000000"],
        &["runs", "cancel", "01a20f3e-0000-7000-8000-000000000000"],
    ] {
        let out = oprun(p, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--as"), "{args:?}");
        let help = String::from_utf8_lossy(&oprun(p, &[args[0], args[1], "--help"]).stdout).to_string();
        assert!(help.contains("local administrator"), "{args:?} --help says why --as is needed: {help}");
    }
    assert!(runs(p).is_empty());
    // A run whose worker died an hour ago (its lease long expired): the
    // reconcile without --as moves it on, audited as the local
    // administrator.
    let scope = ["--workspace", "contoso", "--environment", "contoso-prod", "--as", "ops-user-1", "--json"];
    let out = oprun(p, &[&["dispatch", "demo.inventory_sync"][..], &scope].concat());
    let id = json(&out)["run"]["id"].as_str().unwrap().to_string();
    let url = format!("sqlite://{}", p.join("oprun.db").display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
        sqlx::query(
            "UPDATE operation_runs SET queued_at = $1, created_at = $1, status = 'running', \
             lease_owner = 'dead-worker', lease_expires_at = $1, heartbeat_at = $1, started_at = $1",
        )
        .bind(hour_ago)
        .execute(&mut conn)
        .await
        .unwrap();
    });
    let report = json(&oprun(p, &["reconcile", "--json"]));
    assert_eq!(report["actions"][0]["run_id"], id.as_str(), "{report}");
    assert_eq!(report["actions"].as_array().unwrap().len(), 1, "{report}");
    let by_admin = count(
        p,
        "SELECT COUNT(*) FROM audit_events WHERE action IN ('run.requeue', 'run.expire') \
         AND actor_kind = 'user' AND actor_id = 'local-admin'",
    );
    assert_eq!(by_admin, 1, "the reconcile's audit row names the local administrator");
    // No access file may define an actor of that name: the audit rows
    // naming it are the CLI's alone (and no token can be made for it).
    let reserved = p.join("reserved.toml");
    let text = std::fs::read_to_string(access).unwrap();
    std::fs::write(&reserved, text.replacen("id = \"viewer-1\"", "id = \"local-admin\"", 1)).unwrap();
    let out = oprun(p, &["access", "apply", reserved.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("local-admin") && err.contains("reserved"), "{err}");
    assert_eq!(oprun(p, &["token", "create", "--actor", "local-admin"]).status.code(), Some(2));
}

#[test]
fn runs_show_gives_the_checkpoint_only_to_a_workspace_admin() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    let access = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml");
    assert!(oprun(p, &["access", "apply", access]).status.success());
    let scope = ["--workspace", "contoso", "--environment", "contoso-prod", "--as", "ops-user-1", "--json"];
    let id = json(&oprun(p, &[&["dispatch", "demo.inventory_sync"][..], &scope].concat()))["run"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let checkpoint = serde_json::json!({ "next": "https://graph.test/v1.0/devices?page=2&$skiptoken=c2tpcA" });
    let url = format!("sqlite://{}", p.join("oprun.db").display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let written = sqlx::query("UPDATE operation_runs SET checkpoint = $1 WHERE id = $2")
            .bind(checkpoint.to_string())
            .bind(id.parse::<uuid::Uuid>().unwrap())
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(written.rows_affected(), 1);
    });
    // The operator and the viewer hold no access.manage in contoso: they see
    // that there is a checkpoint, not what it holds.
    for actor in ["viewer-1", "ops-user-1"] {
        let out = oprun(p, &["runs", "show", &id, "--as", actor, "--json"]);
        let v = json(&out);
        assert_eq!((&v["has_checkpoint"], &v["checkpoint"]), (&Value::Bool(true), &Value::Null), "{actor}: {v}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("skiptoken"), "{actor}: {v}");
    }
    // The local administrator (no --as) holds every capability.
    let v = json(&oprun(p, &["runs", "show", &id, "--json"]));
    assert_eq!((&v["has_checkpoint"], &v["checkpoint"]), (&Value::Bool(true), &checkpoint), "{v}");
}

/// Operations at scale from the CLI on the embedded default: filters,
/// actions by filter (dry run first), schedules paused and resumed, a
/// retention pass, and the audit log of every administrative act; bad
/// input exits 2 naming the flag.
#[test]
fn filters_bulk_actions_schedules_prune_and_audit_from_the_cli() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    let access = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml");
    assert!(oprun(p, &["access", "apply", access]).status.success());
    let scope = ["--workspace", "contoso", "--environment", "contoso-prod"];
    let mut ids = vec![];
    for _ in 0..3 {
        let out = oprun(
            p,
            &[&["dispatch", "demo.inventory_sync"][..], &scope, &["--in", "1h", "--as", "ops-user-1", "--json"]]
                .concat(),
        );
        ids.push(json(&out)["run"]["id"].as_str().unwrap().to_string());
        // Only one is active per scope (dedup): cancel it so the next is new.
        let _ = oprun(p, &["runs", "cancel", ids.last().unwrap(), "--as", "ops-user-1"]);
    }
    let out = oprun(
        p,
        &[&["dispatch", "demo.inventory_sync"][..], &scope, &["--in", "1h", "--as", "ops-user-1", "--json"]].concat(),
    );
    let queued = json(&out)["run"]["id"].as_str().unwrap().to_string();
    // Filters: by initiator kind, environment, created range.
    let listed = json(&oprun(
        p,
        &[
            "runs",
            "list",
            "--json",
            "--environment",
            "contoso-prod",
            "--initiator",
            "user:ops-user-1",
            "--created-after",
            "1h",
        ],
    ));
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");
    let none = json(&oprun(p, &["runs", "list", "--json", "--environment", "fabrikam-prod"]));
    assert_eq!(none.as_array().unwrap().len(), 0);
    let cancelled = json(&oprun(p, &["runs", "list", "--json", "--outcome", "cancelled", "--limit", "2"]));
    let last = cancelled[1]["id"].as_str().unwrap();
    let next = json(&oprun(p, &["runs", "list", "--json", "--outcome", "cancelled", "--before", last]));
    assert_eq!(next.as_array().unwrap().len(), 1, "the cursor pages on");
    // Cancel by filter: a dry run first.
    let dry = json(&oprun(p, &["runs", "cancel", "--status", "queued", "--dry-run", "--as", "ops-user-1", "--json"]));
    assert_eq!((dry["matched"].as_u64(), dry["runs"][0]["result"].as_str()), (Some(1), Some("would_cancel")));
    assert_eq!(dry["runs"][0]["run_id"], queued.as_str());
    let done = json(&oprun(p, &["runs", "cancel", "--status", "queued", "--as", "ops-user-1", "--json"]));
    assert_eq!(done["runs"][0]["result"], "cancelled");
    // Schedules: pause, list shows it, the viewer may not resume, resume.
    let out =
        oprun(p, &["schedules", "pause", "demo-contoso-inventory", "--as", "ops-user-1", "--note", "maintenance"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = json(&oprun(p, &["schedules", "list", "--json"]));
    let paused = list.as_array().unwrap().iter().find(|s| s["name"] == "demo-contoso-inventory").unwrap();
    assert_eq!(paused["paused"]["note"], "maintenance", "{paused}");
    assert_eq!(oprun(p, &["schedules", "resume", "demo-contoso-inventory", "--as", "viewer-1"]).status.code(), Some(3));
    assert!(oprun(p, &["schedules", "resume", "demo-contoso-inventory", "--as", "ops-user-1"]).status.success());
    // Tokens made and revoked are audited (by id, never the token).
    let token = json(&oprun(p, &["token", "create", "--actor", "ops-user-1", "--json"]));
    assert!(oprun(p, &["token", "revoke", token["id"].as_str().unwrap()]).status.success());
    // A retention pass (nothing is old yet) and its audit row.
    let pruned = json(&oprun(p, &["prune", "--json"]));
    assert_eq!(pruned[0]["runs"]["cancelled"], 0);
    let audit = json(&oprun(p, &["audit", "--admin", "--json", "--limit", "100"]));
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    for want in [
        "access.apply",
        "token.create",
        "token.revoke",
        "schedule.pause",
        "schedule.resume",
        "operator.refused",
        "retention.prune",
        "runs.cancel_by_filter",
    ] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    let by_actor = json(&oprun(p, &["audit", "--actor", "viewer-1", "--json"]));
    assert!(by_actor.as_array().unwrap().iter().all(|a| a["actor"]["id"] == "viewer-1"), "{by_actor}");
    // Bad input: exit 2, naming what is wrong.
    for (args, want) in [
        (&["runs", "retry", "--as", "ops-user-1"][..], "give a run id, or filters"),
        (&["runs", "retry", &ids[0], "--reason", "x", "--as", "ops-user-1"][..], "not both"),
        (&["runs", "list", "--created-after", "yesterday-ish"][..], "--created-after"),
        (&["runs", "list", "--initiator", "user:"][..], "--initiator"),
        (&["runs", "list", "--before", "nope"][..], "--before"),
        (&["runs", "cancel", "--status", "queued", "--max", "0", "--as", "ops-user-1"][..], "--max"),
        (&["schedules", "pause", "no-such", "--as", "ops-user-1"][..], "schedule 'no-such' not found"),
        (&["schedules", "backfill", "demo-contoso-inventory", "--from", "soon", "--as", "ops-user-1"][..], "--from"),
        (&["audit", "--since", "later"][..], "--since"),
    ] {
        let err = usage_error(p, args, want);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
