//! Collections page by page: counts, partial success, cancel at a page
//! boundary, resume from the checkpoint (after a SIGKILL, after the last page),
//! and next links (signed, absolute-path, other origin).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use oprun_shared::{Initiator, RunOutcome};
use serde_json::json;

use super::fixture::{
    AMZ_SIG, NEXT_ABSOLUTE_PATH, NEXT_OTHER_ORIGIN, NEXT_SIGNED, SIG, TOKEN, provider, provider_with,
};
use super::{dispatch, run_one};
use crate::common;
use crate::common::{Env, Stack};

pub(crate) async fn a_three_page_collection_succeeds_with_its_counts(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    let c = &done.summary_counts;
    assert_eq!((c.get("total"), c.get("succeeded"), c.get("failed"), c.get("pages")), (15, 15, 0, 3));
    for page in 1..=3 {
        assert_eq!(p.hits(&format!("/coll/contoso-prod?page={page}")), 1);
    }
    // The same with the next link in a Link header.
    p.fix.link_header.store(1, Ordering::SeqCst);
    let e2 = Env::new(stack).await;
    let done = run_one(&e2, &p, "test.collect").await;
    assert_eq!((done.outcome, done.summary_counts.get("pages")), (RunOutcome::Succeeded, 3));
}

pub(crate) async fn items_marked_failed_make_the_run_partially_succeeded(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    p.fix.fail_every.store(4, Ordering::SeqCst);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(done.outcome, RunOutcome::PartiallySucceeded);
    assert_eq!((done.summary_counts.get("failed"), done.summary_counts.get("succeeded")), (3, 12));
}

pub(crate) async fn a_cancel_request_stops_a_slow_collection_at_a_page_boundary(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    p.fix.pages.store(30, Ordering::SeqCst);
    p.fix.delay_ms.store(150, Ordering::SeqCst);
    let run = dispatch(&e, "test.collect", "contoso-prod", json!({})).await;
    let worker = e.start_worker(e.http_runner("w1", &p.providers));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while e.service.get(run.id).await.unwrap().summary_counts.get("pages") < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.service.cancel(run.id, &Initiator::user("ops-user-1")).await.unwrap();
    let done = e.until_completed(run.id, 30).await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Cancelled);
    let pages = done.summary_counts.get("pages");
    assert!((2..30).contains(&pages), "{pages}");
    assert_eq!(done.summary_counts.get("total"), pages * 5, "whole pages only");
}

pub(crate) async fn a_killed_worker_resumes_the_collection_from_its_checkpoint(stack: Stack) {
    use std::process::{Command, Stdio};
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    p.fix.pages.store(5, Ordering::SeqCst);
    p.fix.delay_ms.store(400, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("oprun.toml");
    let base = p.fix.base.lock().unwrap().clone();
    std::fs::copy(p._dir.path().join("graph.token"), dir.path().join("graph.token")).unwrap();
    std::fs::write(&cfg, common::binary_config(&e, dir.path(), &base)).unwrap();
    let run = dispatch(&e, "test.collect", "contoso-prod", json!({})).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["--config", cfg.to_str().unwrap(), "worker"])
        .env_remove("OPRUN_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while e.service.get(run.id).await.unwrap().summary_counts.get("pages") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the worker process never got to page 2");
        assert!(child.try_wait().unwrap().is_none(), "the worker process exited early");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    common::reconcile_later(&e, 20 + 10 + 1).await;
    let worker = e.start_worker(e.http_runner("w2", &p.providers));
    let done = e.until_completed(run.id, 60).await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    assert_eq!((done.attempt, done.summary_counts.get("pages"), done.summary_counts.get("total")), (2, 5, 25));
    assert_eq!(p.hits("/coll/contoso-prod?page=1"), 1, "page 1 was not fetched again");
    assert_eq!(p.hits("/coll/contoso-prod?page=2"), 1, "page 2 was not fetched again");
}

/// A worker that fetched and checkpointed the last page, then died before
/// completing: the requeued attempt completes from the `done` checkpoint
/// with the counts already recorded, and fetches nothing again.
pub(crate) async fn a_requeued_collection_whose_last_page_was_checkpointed_fetches_nothing_again(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    let run = dispatch(&e, "test.collect", "contoso-prod", json!({})).await;
    // What the first worker wrote before it died: a claim and one progress
    // write per page (the last with the `done` checkpoint), no completion.
    let claimed = e.service.claim(run.id, "dead-worker").await.unwrap();
    let lease = oprun_shared::Lease::of(&claimed).unwrap();
    let base = p.fix.base.lock().unwrap().clone();
    for page in 1..=3u32 {
        let mut counts = oprun_shared::SummaryCounts::new();
        for (k, v) in [("total", 5), ("processed", 5), ("succeeded", 5), ("failed", 0), ("pages", 1)] {
            counts.add(k, v).unwrap();
        }
        let checkpoint = if page < 3 {
            json!({ "next": format!("{base}/coll/contoso-prod?page={}", page + 1) })
        } else {
            json!({ "next": null, "done": true })
        };
        e.service.progress(&lease, "test.collect", counts, Some(checkpoint)).await.unwrap();
    }
    let report = common::reconcile_later(&e, 20 + 10 + 1).await;
    assert_eq!(report.count(oprun_shared::ReconcileKind::Requeued), 1, "{report:?}");
    let worker = e.start_worker(e.http_runner("w2", &p.providers));
    let done = e.until_completed(run.id, 60).await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    assert_eq!((done.attempt, done.summary_counts.get("pages"), done.summary_counts.get("total")), (2, 3, 15));
    for page in 1..=3 {
        assert_eq!(p.hits(&format!("/coll/contoso-prod?page={page}")), 0, "page {page} was fetched again");
    }
}

/// Next links that carry the provider token, a SAS `sig` and an AWS
/// signature: the attempt follows them as sent, the checkpoint keeps them
/// without those (the cursor stays), and a requeued attempt resumes from the
/// cleaned link.
pub(crate) async fn signed_next_links_are_checkpointed_without_their_secrets_and_still_resume(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    p.fix.next_style.store(NEXT_SIGNED, Ordering::SeqCst);
    p.fix.stall_once.lock().unwrap().insert("/coll/contoso-prod?page=2".into(), 1500);
    let run = dispatch(&e, "test.collect", "contoso-prod", json!({})).await;
    let w1 = e.start_worker(e.http_runner("w1", &p.providers));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let r = e.service.get(run.id).await.unwrap();
        if r.summary_counts.get("pages") == 1 {
            break r.checkpoint.expect("page 1 stored a checkpoint");
        }
        assert!(tokio::time::Instant::now() < deadline, "page 1 was never checkpointed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let next = stored["next"].as_str().unwrap_or_else(|| panic!("{stored}"));
    for secret in [TOKEN, SIG, AMZ_SIG, "access_token", "sig=", "X-Amz-Signature"] {
        assert!(!next.contains(secret), "'{secret}' is in the stored next link {next}");
    }
    assert!(next.contains("/coll/contoso-prod?page=2") && next.contains("$skiptoken=cursor-2"), "{next}");
    // The attempt is superseded while page 2 is in flight (no job pushed yet):
    // its next write is refused and it ends.
    let later = Arc::new(oprun_shared::ManualClock::new(
        oprun_shared::Clock::now(&oprun_shared::SystemClock) + chrono::Duration::seconds(31),
    ));
    let report = Env::service_with(e.db.store.clone(), later)
        .reconcile(&Initiator::user("oncall-1"), &oprun_shared::ReconcileFilter::default(), false)
        .await
        .unwrap();
    assert_eq!(report.count(oprun_shared::ReconcileKind::Requeued), 1, "{report:?}");
    w1.stop().await;
    let first = p.seen().into_iter().find(|s| s.contains("page=2")).expect("attempt 1 asked for page 2");
    assert!(first.contains(SIG) && first.contains(AMZ_SIG), "within an attempt the link is followed as sent: {first}");
    // Attempt 2 resumes at page 2 from the cleaned link.
    oprun_shared::JobQueue::push(&*e.queue, run.id).await.unwrap();
    let w2 = e.start_worker(e.http_runner("w2", &p.providers));
    let done = e.until_completed(run.id, 60).await;
    w2.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    assert_eq!((done.attempt, done.summary_counts.get("pages"), done.summary_counts.get("total")), (2, 3, 15));
    assert_eq!(p.hits("/coll/contoso-prod?page=1"), 1, "page 1 was not fetched again");
    let resumed: Vec<String> = p.seen().into_iter().filter(|s| s.contains("page=2")).skip(1).collect();
    assert_eq!(resumed.len(), 1, "{:?}", p.seen());
    assert!(!resumed[0].contains(SIG) && resumed[0].contains("$skiptoken=cursor-2"), "{resumed:?}");
    let dump = common::dump_tables(&e).await;
    for secret in [TOKEN, SIG, AMZ_SIG] {
        assert!(!dump.contains(secret), "'{secret}' is in a table");
    }
}

/// base_url `…/v1.0` and a next link `/v1.0/coll/…?page=2`: an absolute-path
/// reference, resolved against the origin (not put under the base path a
/// second time). A next link to another origin is still refused unfollowed.
pub(crate) async fn a_next_link_with_an_absolute_path_is_resolved_against_the_origin(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider_with(3, 4, "/v1.0", "").await;
    p.fix.next_style.store(NEXT_ABSOLUTE_PATH, Ordering::SeqCst);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!((done.outcome, done.summary_counts.get("pages")), (RunOutcome::Succeeded, 3), "{done:?}");
    assert_eq!(
        p.seen(),
        ["GET /v1.0/coll/contoso-prod", "GET /v1.0/coll/contoso-prod?page=2", "GET /v1.0/coll/contoso-prod?page=3"]
    );
    let e = Env::new(stack).await;
    let p = provider_with(3, 4, "/v1.0", "").await;
    p.fix.next_style.store(NEXT_OTHER_ORIGIN, Ordering::SeqCst);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!((done.outcome, done.reason_code.as_deref()), (RunOutcome::Failed, Some("provider.bad_response")));
    assert!(done.failure_summary[0].message.contains("another origin"), "{:?}", done.failure_summary);
    assert_eq!(p.seen(), ["GET /v1.0/coll/contoso-prod"], "the other origin got no request");
}
