//! Failure classification: transient answers, throttling, timeouts and refused
//! connections retried within the budget, permanent ones not retried.

use std::sync::atomic::Ordering;

use oprun_shared::RunOutcome;
use serde_json::json;

use super::fixture::{provider, provider_with, providers_at};
use super::{PAGE_1, primary_action, run_on, run_one};
use crate::common::{Env, Stack};

pub(crate) async fn transient_failures_are_retried_within_the_budget(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(2, 4).await;
    p.script("/coll/contoso-prod?page=1", vec![(429, vec![("retry-after", "1".into())], "slow down".into())]);
    p.script("/coll/contoso-prod?page=2", vec![(503, vec![], "busy".into()), (503, vec![], "busy".into())]);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    let c = &done.summary_counts;
    assert_eq!((c.get("throttle_waits"), c.get("retries"), c.get("pages")), (1, 3, 3));
    assert!(c.get("throttle_wait_ms") >= 1000, "the Retry-After wait is visible: {c:?}");
    let audit = e.service.audit(done.id).await.unwrap();
    assert!(
        audit.iter().any(|a| a.entry.details["counts_added"]["throttle_waits"] == 1),
        "the wait is in the audit trail too"
    );
    // Beyond the budget: failed provider.unavailable, retryable.
    let e = Env::new(stack).await;
    let p = provider(2, 4).await;
    p.script("/coll/contoso-prod?page=1", vec![(503, vec![], "busy".into()); 3]);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!((done.outcome, done.reason_code.as_deref()), (RunOutcome::Failed, Some("provider.unavailable")));
    assert_eq!(p.hits("/coll/contoso-prod?page=1"), 3, "first try + 2 retries");
    let op = oprun_scheduler::Operator::new(e.dispatcher.clone());
    let detail = op.reads().show("ops-user-1", done.id).await.unwrap();
    assert_eq!(detail.guidance.primary_action.key, "retry", "{:?}", detail.guidance.primary_action);
}

pub(crate) async fn permanent_failures_are_classified_without_retry(stack: Stack) {
    for (status, outcome, code) in [
        (403, RunOutcome::Blocked, "provider.permission_missing"),
        (401, RunOutcome::Failed, "provider.auth_failed"),
        (404, RunOutcome::Failed, "provider.not_found"),
        (409, RunOutcome::Failed, "provider.conflict"),
        (412, RunOutcome::Failed, "provider.conflict"),
        (418, RunOutcome::Failed, "provider.bad_response"),
    ] {
        let e = Env::new(stack).await;
        let p = provider(3, 4).await;
        p.script("/coll/contoso-prod?page=1", vec![(status, vec![], "{\"error\": \"nope\"}".into())]);
        let done = run_one(&e, &p, "test.collect").await;
        assert_eq!((done.outcome, done.reason_code.as_deref()), (outcome, Some(code)), "{status}");
        assert_eq!(p.hits("/coll/contoso-prod?page=1"), 1, "{status} is not retried");
    }
    // An unparsable page.
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    p.script("/coll/contoso-prod?page=1", vec![(200, vec![], "<html>not json</html>".into())]);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(done.reason_code.as_deref(), Some("provider.bad_response"));
}

/// 502 and 504 are transient like 503: retried within the budget (counted
/// in `retries`, not as throttling), then `provider.unavailable`, retryable.
pub(crate) async fn bad_gateway_and_gateway_timeout_are_retried_within_the_budget_then_unavailable(stack: Stack) {
    for status in [502u16, 504] {
        let e = Env::new(stack).await;
        let p = provider(2, 4).await;
        p.script(PAGE_1, vec![(status, vec![], "upstream trouble".into()); 2]);
        let done = run_one(&e, &p, "test.collect").await;
        assert_eq!(done.outcome, RunOutcome::Succeeded, "{status}: {done:?}");
        let c = &done.summary_counts;
        assert_eq!((c.get("retries"), c.get("throttle_waits"), c.get("pages")), (2, 0, 3), "{status}");
        assert_eq!(p.hits(PAGE_1), 3, "{status}: first try + 2 retries");
        // Beyond the budget.
        let e = Env::new(stack).await;
        let p = provider(2, 4).await;
        p.script(PAGE_1, vec![(status, vec![], "upstream trouble".into()); 3]);
        let done = run_one(&e, &p, "test.collect").await;
        assert_eq!(
            (done.outcome, done.reason_code.as_deref()),
            (RunOutcome::Failed, Some("provider.unavailable")),
            "{status}: {done:?}"
        );
        assert_eq!((p.hits(PAGE_1), done.summary_counts.get("retries")), (3, 2), "{status}");
        let message = &done.failure_summary[0].message;
        assert!(message.contains(&status.to_string()) && message.contains("retry budget of 2 exhausted"), "{message}");
        assert_eq!(primary_action(&e, &done).await, "retry");
    }
}

/// A request over `request_timeout` is transient: retried (here the second
/// try answers in time), and a provider that never answers in time ends the
/// run `provider.timeout` once the budget is spent.
pub(crate) async fn a_request_timeout_is_retried_within_the_budget_then_provider_timeout(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider_with(2, 4, "", "request_timeout = \"300ms\"").await;
    p.fix.stall_once.lock().unwrap().insert(PAGE_1.into(), 3000);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    assert_eq!((done.summary_counts.get("retries"), done.summary_counts.get("pages")), (1, 3));
    assert_eq!(p.hits(PAGE_1), 2, "the timed-out request was sent again");
    // Every try too slow.
    let e = Env::new(stack).await;
    let p = provider_with(2, 4, "", "request_timeout = \"300ms\"").await;
    p.fix.delay_ms.store(3000, Ordering::SeqCst);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!((done.outcome, done.reason_code.as_deref()), (RunOutcome::Failed, Some("provider.timeout")), "{done:?}");
    assert_eq!((p.hits(PAGE_1), done.summary_counts.get("retries")), (3, 2));
    let message = &done.failure_summary[0].message;
    assert!(message.contains("did not answer in time") && message.contains("retry budget of 2 exhausted"), "{message}");
    assert_eq!(primary_action(&e, &done).await, "retry");
}

/// Nothing listens at `base_url`: each refused connection is retried within
/// the budget, then the run fails `provider.unavailable`, retryable.
pub(crate) async fn a_refused_connection_is_retried_within_the_budget_then_unavailable(stack: Stack) {
    let e = Env::new(stack).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: connections to it are refused
    let (providers, _dir) = providers_at(&format!("http://127.0.0.1:{port}"), 2, 4, "");
    let done = run_on(&e, &providers, "test.collect", json!({})).await;
    assert_eq!(
        (done.outcome, done.reason_code.as_deref()),
        (RunOutcome::Failed, Some("provider.unavailable")),
        "{done:?}"
    );
    assert_eq!(done.summary_counts.get("retries"), 2, "{done:?}");
    let message = &done.failure_summary[0].message;
    assert!(message.contains("could not be reached") && message.contains("retry budget of 2 exhausted"), "{message}");
    assert_eq!(primary_action(&e, &done).await, "retry");
}
