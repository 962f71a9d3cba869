//! Start-up and shutdown edges: missing provider tokens, huge durations, a reader that goes away.

use super::*;

#[test]
fn a_missing_provider_token_is_a_start_up_error_naming_the_variable_or_file() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    for (source, needle) in [
        ("token_env = \"OPRUN_TEST_SURELY_UNSET_TOKEN\"", "OPRUN_TEST_SURELY_UNSET_TOKEN"),
        ("token_file = \"/nonexistent/graph.token\"", "/nonexistent/graph.token"),
    ] {
        let cfg = p.join("oprun.toml");
        std::fs::write(
            &cfg,
            format!(
                "capabilities = [\"inventory.sync\"]\n[store]\nurl = \"sqlite://{}/x.db\"\n\
                 [providers.graph]\nbase_url = \"http://127.0.0.1:9\"\n{source}\n\
                 [operations.sync]\nkind = \"http.collect\"\nprovider = \"graph\"\ncapability = \"inventory.sync\"\n\
                 scope = \"environment\"\nsettings = {{ path = \"/x\" }}\n",
                p.display()
            ),
        )
        .unwrap();
        let err = usage_error(p, &["--config", cfg.to_str().unwrap(), "worker"], needle);
        assert!(err.contains(needle) && err.contains("providers.graph"), "{err}");
    }
}

#[test]
fn huge_durations_are_a_usage_error_naming_the_field() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    let access = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml");
    assert!(oprun(p, &["access", "apply", access]).status.success());
    // --expires-in: too long to store (chrono overflow: the token never
    // expired), too long to add to now (a panic), zero, or past the cap.
    for lifetime in ["100000000000y", "1000000y", "11y", "0s"] {
        let err = usage_error(p, &["token", "create", "--actor", "ops-user-1", "--expires-in", lifetime], lifetime);
        assert!(err.contains("--expires-in") && !err.contains("panicked"), "{lifetime}: {err}");
    }
    assert_eq!(count(p, "SELECT COUNT(*) FROM api_tokens"), 0, "no token was written");
    let ok = json(&oprun(p, &["token", "create", "--actor", "ops-user-1", "--expires-in", "10y", "--json"]));
    let at: chrono::DateTime<chrono::Utc> = ok["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(at > chrono::Utc::now() + chrono::Duration::days(3650), "expires_at {at}");
    // Config durations.
    let op = "capabilities = [\"inventory.sync\"]\n[operations.sync]\nkind = \"demo\"\ncapability = \"inventory.sync\"\n\
              scope = \"environment\"\n";
    for (text, field) in [
        ("[scheduler]\ntick = \"100000000000y\"\n", "scheduler.tick"),
        ("[scheduler]\nreconcile_interval = \"1000000y\"\n", "scheduler.reconcile_interval"),
        ("[scheduler]\nlease_grace = \"1000000y\"\n", "scheduler.lease_grace"),
        ("[queue]\npoll_interval = \"100000000000y\"\n", "queue.poll_interval"),
        ("[queue]\npoll_interval = \"1000000y\"\n", "queue.poll_interval"),
        ("[worker]\nshutdown_grace = \"1000000y\"\n", "worker.shutdown_grace"),
        (&format!("{op}lease = \"100000000000y\"\n"), "lease"),
        (&format!("{op}queued_stale_after = \"1000000y\"\n"), "queued_stale_after"),
        (
            "[providers.graph]\nbase_url = \"http://127.0.0.1:9\"\ntoken_env = \"X\"\nretry_after_cap = \"1000000y\"\n",
            "providers.graph.retry_after_cap",
        ),
        (
            "[providers.graph]\nbase_url = \"http://127.0.0.1:9\"\ntoken_env = \"X\"\nrequest_timeout = \"1000000y\"\n",
            "providers.graph.request_timeout",
        ),
        (
            "capabilities = [\"inventory.sync\"]\n[operations.sync]\nkind = \"demo\"\ncapability = \"inventory.sync\"\n\
             scope = \"workspace\"\n[[schedules]]\nname = \"s\"\ncron = \"* * * * *\"\noperation = \"sync\"\n\
             workspace = \"contoso\"\nactor = \"svc-scheduler\"\nmisfire_window = \"1000000y\"\n",
            "misfire_window",
        ),
    ] {
        let cfg = p.join("huge.toml");
        std::fs::write(&cfg, format!("{text}\n[store]\nurl = \"sqlite://{}/huge.db\"\n", p.display())).unwrap();
        let err = usage_error(p, &["--config", cfg.to_str().unwrap(), "runs", "list"], field);
        assert!(err.contains(field) && err.contains("at most"), "{field}: {err}");
    }
}

#[test]
fn a_reader_that_goes_away_ends_every_command_quietly() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    let access = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml");
    let scope = ["--workspace", "contoso", "--environment", "contoso-prod", "--as", "ops-user-1"];
    let dispatch = [&["dispatch", "demo.inventory_sync"][..], &scope].concat();
    let quiet = |args: &[&str]| {
        let out = oprun_closed_stdout(p, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe") && !err.contains("backtrace"),
            "{args:?}: {err}"
        );
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    };
    for args in [
        &["access", "apply", access][..],
        &["runs", "list"],
        &dispatch,
        &[&dispatch[..], &["--json"]].concat(),
        &["runs", "list"],
        &["runs", "list", "--json"],
        &["reconcile", "--dry-run"],
        &["token", "create", "--actor", "ops-user-1"],
        &["migrate"],
    ] {
        quiet(args);
    }
    // The commands still did their work: the run was dispatched (the second
    // dispatch found it active), the token written.
    let listed = runs(p);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(count(p, "SELECT COUNT(*) FROM api_tokens"), 1);
    let id = listed[0]["id"].as_str().unwrap();
    quiet(&["runs", "show", id]);
    quiet(&["runs", "show", id, "--json"]);
    quiet(&["runs", "cancel", id, "--as", "ops-user-1"]);
}

/// `oprun args` in `dir` on the store at `db_url` (`None`: the embedded
/// default in `dir`), started now; stdout and stderr captured.
fn spawn_on(dir: &Path, db_url: Option<&str>, args: &[&str]) -> std::process::Child {
    let mut cmd = Command::new(BIN);
    // Each worker's metrics listener on a port of its own (tests run side by side).
    cmd.args(args)
        .current_dir(dir)
        .env_remove("OPRUN_CONFIG")
        .env("RUST_LOG", "warn")
        .env("OPRUN_METRICS_BIND", "127.0.0.1:0");
    match db_url {
        Some(url) => cmd.env("OPRUN_DATABASE_URL", url),
        None => cmd.env_remove("OPRUN_DATABASE_URL"),
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start oprun")
}

/// Wait for `child`; what it printed on stderr, and its exit code.
fn finish(child: std::process::Child, what: &str) -> Option<i32> {
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{what}: {e}"));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    out.status.code()
}

/// Processes started at the same instant on a fresh store all succeed:
/// several that each apply the schema first (`migrate`, `reconcile`, `runs
/// list`, `access apply`), then, on the store just made, a worker beside a
/// dispatch and a reconcile. Three tries on each store.
#[test]
fn processes_started_together_on_a_fresh_store_all_succeed() {
    let access = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml");
    for try_no in 0..3 {
        for pg in [false, true] {
            let dir = oprun_shared::testing::kept_dir("cli");
            let p = dir.path();
            let url = pg.then(|| {
                tokio::runtime::Runtime::new().unwrap().block_on(oprun_shared::testing::fresh_postgres_database())
            });
            let url = url.as_deref();
            let store = if pg { "postgres" } else { "sqlite" };
            let first: Vec<(&str, std::process::Child)> = [
                ("migrate", vec!["migrate"]),
                ("migrate again", vec!["migrate"]),
                ("reconcile", vec!["reconcile", "--json"]),
                ("runs list", vec!["runs", "list", "--json"]),
                ("access apply", vec!["access", "apply", access]),
            ]
            .into_iter()
            .map(|(what, args)| (what, spawn_on(p, url, &args)))
            .collect();
            for (what, child) in first {
                assert_eq!(finish(child, what), Some(0), "{store} try {try_no}: {what} on a fresh store");
            }
            let scope = ["--workspace", "contoso", "--environment", "contoso-prod", "--as", "ops-user-1"];
            let worker = spawn_on(p, url, &["worker"]);
            let dispatch = spawn_on(p, url, &[&["dispatch", "demo.inventory_sync"][..], &scope].concat());
            let reconcile = spawn_on(p, url, &["reconcile"]);
            assert_eq!(
                finish(dispatch, "dispatch"),
                Some(0),
                "{store} try {try_no}: dispatch beside a starting worker"
            );
            assert_eq!(finish(reconcile, "reconcile"), Some(0), "{store} try {try_no}: reconcile beside them");
            std::thread::sleep(Duration::from_millis(500));
            let sent = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap();
            assert!(sent.success());
            assert_eq!(finish(worker, "worker"), Some(0), "{store} try {try_no}: the worker exits 0 on SIGTERM");
        }
    }
}

/// A store made before the run rows were the queue (migrations 0001–0005),
/// holding a run queued under the old queue, is served after `oprun
/// migrate`: a worker claims the run and it succeeds, reauthorized.
#[test]
fn a_run_queued_before_the_upgrade_is_served_after_migrate() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    let migrations = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"));
    let url = format!("sqlite://{}?mode=rwc", p.join("oprun.db").display());
    let id = uuid::Uuid::now_v7();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        // The schema as it was before migration 0006.
        let migrator = sqlx::migrate::Migrator::new(migrations).await.unwrap();
        migrator.run_direct(Some(5), &mut conn, false).await.unwrap();
        let at = chrono::Utc::now() - chrono::Duration::minutes(3);
        sqlx::query(
            "INSERT INTO operation_runs (id, operation, workspace_id, environment_id, actor_kind, actor_id, \
             source_surface, dedup_key, status, outcome, attempt, max_attempts, queued_at, created_at, updated_at) \
             VALUES ($1, 'demo.inventory_sync', 'contoso', 'contoso-prod', 'user', 'ops-user-1', 'cli', \
             'demo.inventory_sync|contoso|contoso-prod|-|-', 'queued', 'pending', 1, 3, $2, $2, $2)",
        )
        .bind(id)
        .bind(at)
        .execute(&mut conn)
        .await
        .unwrap();
    });
    assert!(oprun(p, &["migrate"]).status.success(), "migrate the old store");
    let access = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml");
    assert!(oprun(p, &["access", "apply", access]).status.success());
    let worker = spawn_on(p, None, &["worker"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let shown = loop {
        let v = json(&oprun(p, &["runs", "show", &id.to_string(), "--json"]));
        if v["status"] == "completed" || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap().success());
    assert_eq!(finish(worker, "worker"), Some(0));
    assert_eq!(shown["outcome"], "succeeded", "{shown}");
    assert_eq!(shown["attempt"], 1, "{shown}");
}

#[test]
fn a_catalog_operation_whose_handler_kind_this_binary_lacks_is_a_start_up_error() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    let cfg = p.join("oprun.toml");
    std::fs::write(
        &cfg,
        format!(
            "capabilities = [\"inventory.sync\"]\n[store]\nurl = \"sqlite://{}/x.db\"\n\
             [operations.\"acme.sync\"]\nkind = \"acme.custom\"\ncapability = \"inventory.sync\"\nscope = \"workspace\"\n",
            p.display()
        ),
    )
    .unwrap();
    let err = usage_error(p, &["--config", cfg.to_str().unwrap(), "worker"], "an unknown handler kind");
    assert!(err.contains("operations.\"acme.sync\"") && err.contains("'acme.custom'"), "{err}");
    assert!(err.contains("demo"), "the kinds it knows are named: {err}");
}
