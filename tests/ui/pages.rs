//! On the bundled demo: an operator opens the blocked run, a form without its
//! CSRF token is refused, a viewer sees no retry button but the "ask an
//! admin" step and another workspace's run is "not found", the operator
//! fixes the access, clicks the primary action and sees the new run succeed
//! with the retry chain on both runs; signed out, a page sends to sign-in.

use super::*;

/// The demo's runs, newest first (as the local administrator sees them).
fn runs(dir: &Path) -> Vec<Value> {
    json_of(&oprun(dir, &["runs", "list", "--json", "--limit", "1000"])).as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_fixes_a_blocked_run_from_the_dashboard_and_a_viewer_may_only_look() {
    let dir = oprun_shared::testing::kept_dir("ui");
    let up = Up::start(dir.path(), None).await;
    // The suspended lab environment's schedule is refused every 30 s: a
    // blocked run; fabrikam's report gives another workspace's run.
    let (blocked, fabrikam) = until(90, "a blocked contoso-lab run and a fabrikam run", || {
        let all = runs(dir.path());
        let blocked = all.iter().find(|r| r["outcome"] == "blocked" && r["environment_id"] == "contoso-lab")?;
        let fabrikam = all.iter().find(|r| r["workspace_id"] == "fabrikam")?;
        Some((blocked["id"].as_str()?.to_string(), fabrikam["id"].as_str()?.to_string()))
    })
    .await;
    let ops_token = token(dir.path(), None, "ops-user-1");
    let viewer_token = token(dir.path(), None, "viewer-1");
    let b = Browser::start().await;

    // Signed out, any page sends to sign-in, and back there afterwards.
    b.goto(&up.url("/ui/runs?outcome=blocked")).await;
    assert_eq!(b.location().await, "/ui/sign-in?next=%2Fui%2Fruns%3Foutcome%3Dblocked");
    b.screenshot("sign-in").await;
    // A wrong token is refused on the page.
    b.sign_in_expecting_refusal("oprun_nothing_wrong").await;
    b.sign_in(&up, &ops_token).await;
    assert_eq!(b.location().await, "/ui/runs?outcome=blocked");
    assert_eq!(b.text("#actor").await, "ops-user-1");
    assert!(b.count(&format!("tr[data-run='{blocked}']")).await == 1, "the blocked run is listed");
    b.goto(&up.url("/ui/runs")).await;
    b.screenshot("runs").await;

    b.goto(&up.url("/ui")).await;
    assert!(b.text("#by-outcome").await.contains("contoso"), "the outcome table names the workspace");
    assert_eq!(b.count(&format!("section.card tr[data-run='{blocked}']")).await, 1, "the blocked run needs action");
    b.screenshot("overview").await;
    b.goto(&up.url("/ui/schedules")).await;
    assert!(
        b.text("[data-schedule='demo-contoso-lab-inventory']").await.contains("refused"),
        "the lab's ticks are refused"
    );
    b.screenshot("schedules").await;

    // The blocked run: its guidance, for an operator who may retry but not
    // restore the environment.
    let run_page = up.url(&format!("/ui/runs/{blocked}"));
    b.goto(&run_page).await;
    assert_eq!(b.text("#guidance-title").await, "Blocked: Environment not operable");
    assert!(b.text("#guidance-reason").await.contains("not operable"));
    assert!(b.text("#primary-action").await.contains("Ask a workspace admin to make the environment operable"));
    assert_eq!(b.count("button[data-action='retry']").await, 1, "retry is offered (secondary) to the operator");
    b.screenshot("run-blocked").await;
    b.fits_width().await.expect("the run page fits 1280 px");
    // On a phone: the same page, no sideways scrolling.
    b.viewport(390, 844).await;
    b.goto(&run_page).await;
    b.fits_width().await.expect("the run page fits a 390 px phone");
    b.screenshot("run-blocked-phone").await;
    b.goto(&up.url("/ui/runs")).await;
    b.fits_width().await.expect("the runs list fits a 390 px phone");
    b.viewport(1280, 800).await;
    b.goto(&run_page).await;

    // A form posted without its CSRF token is refused, and nothing is done.
    b.client
        .execute("document.querySelectorAll(\"input[name='csrf']\").forEach(e => e.remove()); return null;", vec![])
        .await
        .expect("strip the CSRF fields");
    b.click("button[data-action='retry']").await;
    assert_eq!(b.h1().await, "Form refused");
    assert!(b.text("main").await.contains("CSRF"));
    assert!(!runs(dir.path()).iter().any(|r| r["retry_of"] == blocked.as_str()), "a refused form retried nothing");

    // Bulk retry by filter: a preview lists the run and changes nothing; a
    // bad filter is named on the page.
    b.goto(&up.url("/ui/bulk")).await;
    b.find("input[name='reason']").await.send_keys("execution.environment_not_operable").await.unwrap();
    b.click("#preview").await;
    assert_eq!(b.text("#bulk-report h2").await, "Would retry 1 runs");
    assert_eq!(b.count(&format!("#bulk-report a[href='/ui/runs/{blocked}']")).await, 1);
    assert!(b.text("#bulk-report").await.contains("would_retry"));
    b.screenshot("bulk-preview").await;
    b.find("input[name='created_after']").await.send_keys("yesterday-ish").await.unwrap();
    b.click("#preview").await;
    assert!(b.text("main .notice").await.contains("created_after"), "the bad field is named");
    assert!(!runs(dir.path()).iter().any(|r| r["retry_of"] == blocked.as_str()), "a preview retried nothing");

    // Sign out; the session is gone (the old page sends to sign-in).
    b.goto(&run_page).await;
    b.sign_out().await;
    b.goto(&run_page).await;
    assert!(b.location().await.starts_with("/ui/sign-in?next="), "a signed-out session is sent to sign-in");

    // The viewer: no retry button, the "ask an admin" step, and another
    // workspace's run is not found.
    b.sign_in(&up, &viewer_token).await;
    assert_eq!(b.location().await, format!("/ui/runs/{blocked}"));
    assert_eq!(b.count("button[data-action]").await, 0, "a viewer is offered no button");
    let ask = b.text("#primary-action [data-action='contact_admin']").await;
    assert!(ask.starts_with("Ask a workspace admin to make the environment operable again"), "{ask}");
    b.screenshot("run-as-viewer").await;
    b.goto(&up.url(&format!("/ui/runs/{fabrikam}"))).await;
    assert_eq!(b.h1().await, "Not found");
    assert!(!b.text("main").await.contains("fabrikam"), "nothing of the other workspace is named");
    b.goto(&up.url("/ui/runs")).await;
    assert_eq!(b.count(&format!("tr[data-run='{fabrikam}']")).await, 0, "the viewer lists no fabrikam run");
    b.goto(&up.url("/ui")).await;
    b.sign_out().await;

    // The schedules that reach the lab are paused first: once the environment
    // is active their next tick would dispatch a run of the same scope, and
    // the retry would get that run back (deduplicated) instead of a new one.
    for schedule in ["demo-contoso-lab-inventory", "demo-contoso-inventory"] {
        let paused = oprun(dir.path(), &["schedules", "pause", schedule, "--as", "ops-user-1"]);
        assert!(paused.status.success(), "pause {schedule}: {}", String::from_utf8_lossy(&paused.stderr));
    }
    // The operator fixes the access (the lab environment active again) …
    let access = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/demo-access.toml")).unwrap();
    let fixed = access.replace("status = \"suspended\"", "status = \"active\"");
    assert_ne!(fixed, access, "the demo access file suspends an environment");
    let file = dir.path().join("fixed-access.toml");
    std::fs::write(&file, fixed).unwrap();
    let applied = oprun(dir.path(), &["access", "apply", file.to_str().unwrap()]);
    assert!(applied.status.success(), "access apply: {}", String::from_utf8_lossy(&applied.stderr));

    // … and the case says so: retry is now the primary action, a button.
    b.goto(&run_page).await;
    b.sign_in(&up, &ops_token).await;
    assert_eq!(b.location().await, format!("/ui/runs/{blocked}"));
    assert!(b.text("#guidance-reason").await.contains("This is fixed now"));
    assert_eq!(b.text("#primary-action button[data-action='retry']").await, "The cause is fixed: retry the run");
    b.screenshot("run-fixed").await;
    b.click("#primary-action button[data-action='retry']").await;
    assert_eq!(b.h1().await, "Retry this run?");
    assert!(b.text("#confirm-what").await.contains("starts a new run of demo.inventory_sync"));
    b.screenshot("retry-confirm").await;
    b.click("#confirm").await;
    let landed = b.location().await;
    let new_id = landed
        .strip_prefix("/ui/runs/")
        .and_then(|rest| rest.strip_suffix("?done=retried"))
        .unwrap_or_else(|| panic!("not on the new run's page: {landed}"))
        .to_string();
    assert_ne!(new_id, blocked);
    // The new run succeeds (the page refreshes itself while it is live;
    // reload it to be sure).
    let mut state = String::new();
    for _ in 0..60 {
        b.goto(&up.url(&format!("/ui/runs/{new_id}"))).await;
        state = b.text("#state").await;
        if state == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(state, "succeeded", "the retry run ends succeeded");
    assert_eq!(b.text("#guidance-title").await, "Completed successfully");
    let chain = b.text("#chain").await;
    assert!(chain.contains("Retries "), "{chain}");
    assert_eq!(b.count(&format!("#chain .retry-of a[href='/ui/runs/{blocked}']")).await, 1);
    b.screenshot("run-retried").await;
    // The old run names its retry and leads to it.
    b.goto(&run_page).await;
    assert_eq!(b.count(&format!("#chain .retried-by a[href='/ui/runs/{new_id}']")).await, 1);
    assert_eq!(b.count(&format!("#primary-action a[data-action='view_retry'][href='/ui/runs/{new_id}']")).await, 1);
    assert!(b.text("#audit").await.contains("run.retried"), "the old run's audit trail records its retry");
    b.screenshot("run-old").await;
    b.close().await;
}

impl Browser {
    async fn sign_in_expecting_refusal(&self, token: &str) {
        let field = self.client.find(Locator::Css("#token")).await.expect("the token field");
        field.send_keys(token).await.expect("type the token");
        self.click("#sign-in").await;
        assert!(self.location().await.starts_with("/ui/sign-in"), "a bad token stays on sign-in");
        assert!(self.text("main").await.contains("That token is not valid"));
    }
}
