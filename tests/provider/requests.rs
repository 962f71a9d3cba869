//! What is sent and what never leaks: `http.call` params and answers, ids with
//! dot segments refused before any request, an echoed token redacted everywhere.

use oprun_scheduler::DispatchOutcome;
use oprun_shared::{DispatchRequest, Initiator, OperationRun, RunOutcome, Scope, SourceSurface};
use serde_json::json;

use super::fixture::{TOKEN, provider};
use super::{dispatch, run_one};
use crate::common;
use crate::common::{Env, Stack};

pub(crate) async fn an_echoed_token_reaches_no_table_and_no_log_line(stack: Stack) {
    let logs = common::capture_logs();
    let e = Env::new(stack).await;
    let p = provider(1, 4).await;
    let echo = "invalid request: Authorization: Bearer $TOKEN (token=$TOKEN) raw $TOKEN".to_string();
    p.script("/coll/contoso-prod?page=1", vec![(400, vec![], echo.clone())]);
    p.script("/coll/contoso-dev?page=1", vec![(503, vec![], echo.clone()), (503, vec![], echo)]);
    let a = run_one(&e, &p, "test.collect").await;
    let b = dispatch(&e, "test.collect", "contoso-dev", json!({})).await;
    let worker = e.start_worker(e.http_runner("w2", &p.providers));
    let b = e.until_completed(b.id, 60).await;
    worker.stop().await;
    assert_eq!(a.reason_code.as_deref(), Some("provider.bad_response"));
    assert_eq!(b.reason_code.as_deref(), Some("provider.unavailable"));
    assert!(
        a.failure_summary[0].message.contains("invalid request"),
        "a redacted excerpt is kept: {:?}",
        a.failure_summary
    );
    let dump = common::dump_tables(&e).await;
    assert!(dump.len() > 1000, "the dump has the rows");
    assert!(!dump.contains(TOKEN), "the token is in a table");
    let logged = logs.lock().unwrap().clone();
    assert!(!logged.is_empty() && logged.contains("provider"), "logs were captured");
    assert!(!logged.contains(TOKEN), "the token is in a log line");
}

pub(crate) async fn http_call_sends_the_params_and_classifies_the_answer(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    let done = run_one(&e, &p, "test.call").await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    assert_eq!(p.hits("/call/contoso-prod"), 1);
    assert_eq!(done.params, json!({"note": "hello"}), "{done:?}");
    assert_eq!(
        *p.fix.call_bodies.lock().unwrap(),
        std::slice::from_ref(&done.params),
        "the provider received the run's params"
    );
    p.script("/call/contoso-prod", vec![(409, vec![], "version mismatch".into())]);
    let e = Env::new(stack).await;
    let done = run_one(&e, &p, "test.call").await;
    assert_eq!(done.reason_code.as_deref(), Some("provider.conflict"));
    assert_eq!(p.fix.call_bodies.lock().unwrap().len(), 2);
    assert_eq!(p.fix.call_bodies.lock().unwrap()[1], done.params, "the refused call carried the params too");
}

async fn dispatch_scope(e: &Env, op: &str, scope: Scope) -> OperationRun {
    let req = DispatchRequest {
        operation: op.into(),
        scope,
        initiator: Initiator::user("ops-user-1"),
        source: SourceSurface::Cli,
        context: json!({}),
        params: json!({}),
        available_at: None,
    };
    match e.dispatcher.dispatch(req).await.unwrap() {
        DispatchOutcome::Dispatched { run, .. } => *run,
        other => panic!("{other:?}"),
    }
}

/// `{target_id}` = `..` would turn `/load/{target_id}` into `/` (URL parsing
/// resolves dot segments): refused, non-retryable, before any request.
pub(crate) async fn a_dot_segment_id_is_refused_before_any_request(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    let mut ids = vec![];
    for target in ["..", "."] {
        let scope = Scope {
            workspace_id: "contoso".into(),
            environment_id: Some("contoso-prod".into()),
            target_type: Some("device".into()),
            target_id: Some(target.into()),
        };
        ids.push(dispatch_scope(&e, "load.call", scope).await.id);
    }
    let worker = e.start_worker(e.http_runner("w1", &p.providers));
    for id in ids {
        let done = e.until_completed(id, 60).await;
        assert_eq!(
            (done.outcome, done.reason_code.as_deref()),
            (RunOutcome::Failed, Some("run.payload_invalid")),
            "{done:?}"
        );
        let message = &done.failure_summary[0].message;
        assert!(message.contains("{target_id}") && message.contains("request path"), "{message}");
    }
    worker.stop().await;
    assert_eq!(p.seen(), Vec::<String>::new(), "no request reached the provider");
}
