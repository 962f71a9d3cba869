//! A process without the API (`oprun worker`) serves `/metrics` on its own
//! listener (`metrics.bind`), behind the same token rule as the API's; the
//! exposition's names follow Prometheus conventions.

use super::*;

/// The demo's access truth with a scraper (`svc-prometheus`) holding
/// `metrics.view` in every workspace.
fn access_with_scraper() -> String {
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml")).unwrap();
    let mut text = demo.replacen("[roles]\n", "[roles]\nmonitoring = [\"metrics.view\"]\n", 1);
    text.push_str("\n[[actors]]\nid = \"svc-prometheus\"\nkind = \"service\"\n");
    for ws in ["contoso", "fabrikam"] {
        text.push_str(&format!(
            "[[memberships]]\nactor = \"svc-prometheus\"\nworkspace = \"{ws}\"\nrole = \"monitoring\"\n"
        ));
    }
    text
}

/// What is wrong with the exposition's names: every family `oprun_`-prefixed,
/// counters `_total`, histograms in base units (`_seconds`), no `_ms`.
fn naming_problems(exposition: &str) -> Vec<String> {
    let mut problems = vec![];
    for line in exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            problems.push(format!("unreadable TYPE line: {line}"));
            continue;
        };
        if !name.starts_with("oprun_") {
            problems.push(format!("{name}: not oprun_-prefixed"));
        }
        if name.contains("_ms") || name.contains("millis") {
            problems.push(format!("{name}: not in base units"));
        }
        match kind {
            "counter" if !name.ends_with("_total") => problems.push(format!("{name}: a counter without _total")),
            "histogram" if !name.ends_with("_seconds") => problems.push(format!("{name}: a histogram not in seconds")),
            "summary" => problems.push(format!("{name}: a summary (per-process quantiles cannot be aggregated)")),
            "counter" | "histogram" | "gauge" => {}
            other => problems.push(format!("{name}: unexpected type {other}")),
        }
    }
    problems
}

#[test]
fn names_follow_prometheus_conventions_and_the_check_catches_each_slip() {
    assert!(
        naming_problems("# TYPE oprun_runs_finished_total counter\n# TYPE oprun_run_duration_seconds histogram\n")
            .is_empty()
    );
    for bad in [
        "# TYPE oprun_runs_finished counter",
        "# TYPE oprun_wait_ms_total counter",
        "# TYPE oprun_duration histogram",
        "# TYPE oprun_latency_seconds summary",
        "# TYPE runs_total counter",
    ] {
        assert_eq!(naming_problems(bad).len(), 1, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_metrics_on_its_own_listener_behind_a_token() {
    let dir = oprun_shared::testing::kept_dir("cli");
    let p = dir.path();
    std::fs::write(p.join("access.toml"), access_with_scraper()).unwrap();
    let demo = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo.toml")).unwrap();
    let cfg = p.join("oprun.toml");
    std::fs::write(&cfg, demo.replacen("access_file = \"demo-access.toml\"", "access_file = \"access.toml\"", 1))
        .unwrap();
    let cfg = cfg.to_str().unwrap();
    assert!(oprun(p, &["--config", cfg, "access", "apply", "access.toml"]).status.success());
    let scraper = json(&oprun(p, &["--config", cfg, "token", "create", "--actor", "svc-prometheus", "--json"]));
    let scraper = scraper["token"].as_str().unwrap().to_string();
    let ops = json(&oprun(p, &["--config", cfg, "token", "create", "--actor", "ops-user-1", "--json"]));
    let ops = ops["token"].as_str().unwrap().to_string();
    let run = json(&oprun(
        p,
        &[
            "--config",
            cfg,
            "dispatch",
            "demo.inventory_sync",
            "--workspace",
            "contoso",
            "--environment",
            "contoso-prod",
            "--as",
            "ops-user-1",
            "--params",
            r#"{"pages": 1, "page_delay_ms": 0}"#,
            "--json",
        ],
    ));
    let id = run["run"]["id"].as_str().expect("a run id").to_string();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let worker = Command::new(BIN)
        .args(["--config", cfg, "worker"])
        .current_dir(p)
        .env_remove("OPRUN_CONFIG")
        .env_remove("OPRUN_DATABASE_URL")
        .env("OPRUN_METRICS_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start oprun worker");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _worker = Kill(worker);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = json(&oprun(p, &["--config", cfg, "runs", "show", &id, "--json"]))["status"] == "completed";
        let up = http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success());
        if done && up {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not serve /healthz and finish the run within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No token, or a token without metrics.view everywhere: refused as the API refuses.
    assert_eq!(http.get(format!("{base}/metrics")).send().await.unwrap().status(), reqwest::StatusCode::UNAUTHORIZED);
    let r = http.get(format!("{base}/metrics")).bearer_auth(&ops).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FORBIDDEN);
    // The scraper reads what this worker did.
    let r = http.get(format!("{base}/metrics")).bearer_auth(&scraper).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("oprun_runs_finished_total{") && l.contains("outcome=\"succeeded\"")),
        "{text}"
    );
    assert!(text.contains("# TYPE oprun_run_duration_seconds histogram"), "{text}");
    assert!(text.contains("oprun_run_duration_seconds_bucket{"), "histogram buckets: {text}");
    assert_eq!(naming_problems(&text), Vec::<String>::new(), "{text}");
    // Only metrics and health here: the API is not.
    let r = http.get(format!("{base}/v1/runs")).bearer_auth(&ops).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
}
