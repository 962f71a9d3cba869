//! Retries over time, snoozes and delayed runs, on a manual clock (no test
//! sleeps for a backoff): the run waits queued, holding no worker slot, until
//! the clock reaches its `available_at`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, DurationRound, Utc};
use oprun_shared::{
    Clock, Completion, DispatchRequest, Initiator, ManualClock, OperationRun, ReconcileFilter, RunFilter, RunOutcome,
    RunStatus, Scope, SourceSurface, SummaryCounts, SystemClock,
};
use oprun_worker::{Operation, OperationError, RunContext};
use serde_json::{Value, json};
use uuid::Uuid;

use super::PAGE_1;
use super::fixture::{Provider, provider};
use crate::common::{Env, Stack};

/// A manual clock standing at the wall clock's now, and an env that decides by it.
async fn manual_env(stack: Stack) -> (Env, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    (Env::with_clock(stack, clock.clone()).await, clock)
}

async fn dispatch_at(e: &Env, op: &str, env: &str, params: Value, at: Option<DateTime<Utc>>) -> OperationRun {
    e.dispatch_new(DispatchRequest {
        available_at: at,
        operation: op.into(),
        scope: Scope { workspace_id: "contoso".into(), environment_id: Some(env.into()), ..Scope::default() },
        initiator: Initiator::user("ops-user-1"),
        source: SourceSurface::Cli,
        context: json!({}),
        params,
    })
    .await
}

/// Wait (real time, at most 20 s) until the run is queued again, waiting
/// on attempt `attempt` with `snoozes` snoozes.
async fn until_waiting(e: &Env, id: Uuid, attempt: i32, snoozes: i32) -> OperationRun {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let run = e.service.get(id).await.unwrap();
        if run.status == RunStatus::Queued && run.attempt == attempt && run.snoozes == snoozes {
            return run;
        }
        assert!(run.status != RunStatus::Completed, "run ended instead of waiting: {run:?}");
        assert!(tokio::time::Instant::now() < deadline, "run {id} not waiting on attempt {attempt}: {run:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn busy(n: usize) -> Vec<super::fixture::Answer> {
    vec![(503, vec![], "busy".into()); n]
}

/// The audit actions of a run, in order.
async fn actions(e: &Env, id: Uuid) -> Vec<(String, Value)> {
    e.service.audit(id).await.unwrap().into_iter().map(|a| (a.entry.action, a.entry.details)).collect()
}

/// 503 on the first three attempts, then 200: the run heals by itself on
/// attempt 4, each wait the policy's backoff (15 s, 30 s, 60 s: no jitter
/// here) and visible in the audit; between attempts it holds no lease.
pub(crate) async fn transient_failures_retry_over_time_until_the_run_succeeds(stack: Stack) {
    let (e, clock) = manual_env(stack).await;
    let p = provider(0, 4).await;
    p.script(PAGE_1, busy(3));
    let run = dispatch_at(&e, "test.retrying", "contoso-prod", json!({}), None).await;
    let worker = e.start_worker(e.http_runner("w1", &p.providers));
    for (next, backoff) in [(2, 15), (3, 30), (4, 60)] {
        let waiting = until_waiting(&e, run.id, next, 0).await;
        assert_eq!(waiting.available_at - clock.now(), chrono::Duration::seconds(backoff), "before attempt {next}");
        assert_eq!(
            (waiting.lease_owner.as_deref(), waiting.reason_code.as_deref()),
            (None, Some("provider.unavailable"))
        );
        let waiting_filter = RunFilter { waiting_at: Some(clock.now()), limit: 10, ..RunFilter::default() };
        let listed = e.service.list(&waiting_filter).await;
        assert_eq!(listed.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), vec![run.id], "runs list --waiting");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(p.hits(PAGE_1), next as usize - 1, "not tried again before its time");
        clock.set(waiting.available_at);
    }
    let done = e.until_completed(run.id, 20).await;
    worker.stop().await;
    assert_eq!((done.outcome, done.attempt, done.reason_code.as_deref()), (RunOutcome::Succeeded, 4, None), "{done:?}");
    assert_eq!(done.summary_counts.get("pages"), 3);
    let summary: Vec<&str> = done.failure_summary.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(summary.len(), 3, "each failed attempt is kept: {summary:?}");
    for (i, m) in summary.iter().enumerate() {
        assert!(m.starts_with(&format!("attempt {} of 4: ", i + 1)) && m.contains("503"), "{m}");
    }
    let audit = actions(&e, run.id).await;
    let backoffs: Vec<u64> = audit
        .iter()
        .filter(|(a, _)| a == "run.retry_scheduled")
        .map(|(_, d)| d["backoff_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(backoffs, vec![15_000, 30_000, 60_000]);
    assert_eq!(audit.iter().filter(|(a, _)| a == "run.claim").count(), 4);
}

/// Every attempt fails: the run ends failed with the last reason and every
/// attempt in its failure summary; a permanent 404 is never retried.
pub(crate) async fn exhausted_attempts_fail_with_each_attempt_and_a_permanent_failure_never_retries(stack: Stack) {
    let (e, clock) = manual_env(stack).await;
    let p = provider(0, 4).await;
    p.script(PAGE_1, busy(4));
    let run = dispatch_at(&e, "test.retrying", "contoso-prod", json!({}), None).await;
    let worker = e.start_worker(e.http_runner("w1", &p.providers));
    for next in 2..=4 {
        let waiting = until_waiting(&e, run.id, next, 0).await;
        clock.set(waiting.available_at);
    }
    let done = e.until_completed(run.id, 20).await;
    assert_eq!((done.outcome, done.attempt), (RunOutcome::Failed, 4), "{done:?}");
    assert_eq!(done.reason_code.as_deref(), Some("provider.unavailable"));
    let attempts: Vec<&str> = done.failure_summary.iter().map(|f| &f.message[..12]).collect();
    assert_eq!(attempts, vec!["attempt 1 of", "attempt 2 of", "attempt 3 of", "attempt 4 of"]);
    assert_eq!(p.hits(PAGE_1), 4);

    let p404 = "/coll/contoso-dev?page=1";
    p.script(p404, vec![(404, vec![], "gone".into())]);
    let run = dispatch_at(&e, "test.retrying", "contoso-dev", json!({}), None).await;
    let done = e.until_completed(run.id, 20).await;
    worker.stop().await;
    assert_eq!(
        (done.outcome, done.attempt, done.reason_code.as_deref()),
        (RunOutcome::Failed, 1, Some("provider.not_found"))
    );
    assert_eq!(p.hits(p404), 1, "a permanent failure is not retried");
    assert!(!actions(&e, run.id).await.iter().any(|(a, _)| a == "run.retry_scheduled"));
}

/// A 429 whose Retry-After (600 s, or the same as a date) is over the
/// in-attempt cap snoozes the run until then: its slot is free at once (on a
/// worker with one slot, another run proceeds), no attempt is used, and it
/// completes when the time comes.
pub(crate) async fn a_retry_after_beyond_the_cap_snoozes_the_run_without_holding_a_slot(stack: Stack) {
    let (e, clock) = manual_env(stack).await;
    let p = crate::fixture::provider_on(3, 4, clock.clone()).await;
    // In seconds, as a date, and absurdly long (u64::MAX seconds: a snooze
    // of at most a year, not an overflow).
    for form in ["seconds", "date", "u64::MAX"] {
        // Whole seconds, as an HTTP date carries them.
        clock.set(clock.now().duration_trunc(chrono::TimeDelta::seconds(1)).unwrap());
        let start = clock.now();
        let (after, wait) = match form {
            "seconds" => ("600".to_string(), chrono::Duration::seconds(600)),
            "date" => ((start + chrono::Duration::seconds(600)).to_rfc2822(), chrono::Duration::seconds(600)),
            _ => (u64::MAX.to_string(), chrono::Duration::days(365)),
        };
        p.script(PAGE_1, vec![(429, vec![("retry-after", after.clone())], "slow down".into())]);
        let run = dispatch_at(&e, "test.collect", "contoso-prod", json!({}), None).await;
        let worker = e.start_worker_with(e.http_runner("w1", &p.providers), 1);
        let snoozed = until_waiting(&e, run.id, 1, 1).await;
        assert_eq!(snoozed.available_at - start, wait, "Retry-After {after}");
        assert_eq!(snoozed.reason_code.as_deref(), Some("provider.throttled"));
        let other = dispatch_at(&e, "test.collect", "contoso-dev", json!({}), None).await;
        let other = e.until_completed(other.id, 20).await;
        assert_eq!(other.outcome, RunOutcome::Succeeded, "the one slot was free for another run");
        assert_eq!(e.service.get(run.id).await.unwrap().status, RunStatus::Queued, "still snoozed");
        let detail = oprun_scheduler::Operator::new(e.dispatcher.clone()).reads().show("ops-user-1", run.id).await;
        let guidance = detail.unwrap().guidance;
        let title = &guidance.title;
        assert!(title.starts_with("Provider throttling this environment; resuming automatically at"), "{title}");
        assert!(title.contains(&snoozed.available_at.to_rfc3339()) && title.ends_with("(attempt 1 of 3)"), "{title}");
        clock.set(snoozed.available_at);
        let done = e.until_completed(run.id, 20).await;
        worker.stop().await;
        assert_eq!((done.outcome, done.attempt, done.snoozes), (RunOutcome::Succeeded, 1, 1), "{done:?}");
        let snooze = actions(&e, run.id).await.into_iter().find(|(a, _)| a == "run.snooze").expect("audited");
        assert_eq!(snooze.1["snooze"], 1);
    }
}

/// A handler that asks to run again later: it snoozes as often as asked
/// (`snoozes` in its params), using no attempt, and one that asks more
/// often than `retry.max_snoozes` (3) ends failed `run.snooze_limit`.
#[derive(Debug)]
pub(crate) struct Snoozer;

#[async_trait]
impl Operation for Snoozer {
    async fn execute(&self, ctx: &RunContext) -> Result<Completion, OperationError> {
        let wanted = ctx.params()["snoozes"].as_i64().unwrap_or(0);
        if i64::from(ctx.run().snoozes) < wanted {
            return Err(OperationError::snooze_until(
                ctx.now() + chrono::Duration::minutes(5),
                "the tenant is still onboarding",
            ));
        }
        Ok(Completion::succeeded(SummaryCounts::new().with("total", 1).unwrap()))
    }
}

pub(crate) async fn a_handler_snoozes_twice_then_succeeds_on_its_first_attempt(stack: Stack) {
    let (e, clock) = manual_env(stack).await;
    let p = provider(0, 4).await;
    let runner = || {
        let mut ops = e.operations();
        p.providers.register(&mut ops);
        ops.register("snoozer", Snoozer);
        oprun_worker::Runner::new(e.service.clone(), e.authorizer.clone(), ops, "w1".into())
    };
    let run = dispatch_at(&e, "test.snoozer", "contoso-prod", json!({"snoozes": 2}), None).await;
    let worker = e.start_worker(runner());
    for n in 1..=2 {
        let waiting = until_waiting(&e, run.id, 1, n).await;
        assert_eq!(waiting.available_at - clock.now(), chrono::Duration::minutes(5));
        assert_eq!(waiting.reason_code, None);
        clock.set(waiting.available_at);
    }
    let done = e.until_completed(run.id, 20).await;
    assert_eq!((done.outcome, done.attempt, done.snoozes), (RunOutcome::Succeeded, 1, 2), "{done:?}");
    let audit = actions(&e, run.id).await;
    assert_eq!(audit.iter().filter(|(a, _)| a == "run.snooze").count(), 2);
    assert!(audit.iter().all(|(a, d)| a != "run.snooze" || d["message"] == "the tenant is still onboarding"));

    let forever = dispatch_at(&e, "test.snoozer", "contoso-prod", json!({"snoozes": 100}), None).await;
    for n in 1..=3 {
        let waiting = until_waiting(&e, forever.id, 1, n).await;
        clock.set(waiting.available_at);
    }
    let done = e.until_completed(forever.id, 20).await;
    worker.stop().await;
    assert_eq!((done.outcome, done.reason_code.as_deref()), (RunOutcome::Failed, Some("run.snooze_limit")));
    assert!(done.failure_summary[0].message.contains("after 3 snoozes"), "{:?}", done.failure_summary);
}

/// A run dispatched for later is not claimed before its time, and is
/// claimed promptly (at the next poll) once the clock reaches it.
pub(crate) async fn a_delayed_dispatch_is_claimed_only_when_its_time_comes(stack: Stack) {
    let (e, clock) = manual_env(stack).await;
    let at = clock.now() + chrono::Duration::minutes(10);
    let run = dispatch_at(&e, "test.count", "contoso-prod", json!({}), Some(at)).await;
    assert_eq!(run.available_at, at);
    let worker = e.start_worker(e.runner("w1"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((e.service.get(run.id).await.unwrap().status, e.calls()), (RunStatus::Queued, 0), "not before its time");
    clock.set(at);
    let started = std::time::Instant::now();
    let done = e.until_completed(run.id, 20).await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded);
    assert!(started.elapsed() < Duration::from_secs(5), "claimed promptly: {:?}", started.elapsed());
    assert_eq!(done.started_at, Some(at), "claimed at its time by the clock");
}

/// An operator with `runs.retry` starts a waiting run now ("Retry now", the
/// guidance's primary action) without moving the clock; a waiting run can be
/// cancelled.
pub(crate) async fn an_operator_retries_a_waiting_run_now_or_cancels_it(stack: Stack) {
    let (e, _clock) = manual_env(stack).await;
    let p: Provider = provider(0, 4).await;
    p.script(PAGE_1, busy(1));
    let op = oprun_scheduler::Operator::new(e.dispatcher.clone());
    let run = dispatch_at(&e, "test.retrying", "contoso-prod", json!({}), None).await;
    let worker = e.start_worker(e.http_runner("w1", &p.providers));
    until_waiting(&e, run.id, 2, 0).await;
    let guidance = op.reads().show("ops-user-1", run.id).await.unwrap().guidance;
    assert_eq!(guidance.primary_action.key, "retry_now", "{guidance:?}");
    assert_eq!(
        guidance.title,
        format!("Retrying automatically at {} (attempt 2 of 4)", {
            e.service.get(run.id).await.unwrap().available_at.to_rfc3339()
        })
    );
    assert!(guidance.secondary_actions.iter().any(|a| a.key == "cancel"), "{guidance:?}");
    let viewer = op.reads().show("viewer-1", run.id).await.unwrap().guidance;
    assert_eq!(viewer.primary_action.kind, oprun_shared::ActionKind::None, "a viewer without runs.retry: {viewer:?}");
    assert!(viewer.secondary_actions.is_empty(), "nor cancel: {viewer:?}");
    let retried = op.retry(&Initiator::user("ops-user-1"), run.id).await.unwrap();
    assert_eq!(retried.run.id, run.id, "the same run, made ready now");
    let done = e.until_completed(run.id, 20).await;
    assert_eq!((done.outcome, done.attempt), (RunOutcome::Succeeded, 2), "{done:?}");
    assert!(actions(&e, run.id).await.iter().any(|(a, _)| a == "run.retry_now"));

    p.script("/coll/contoso-dev?page=1", busy(1));
    let run = dispatch_at(&e, "test.retrying", "contoso-dev", json!({}), None).await;
    until_waiting(&e, run.id, 2, 0).await;
    op.cancel(&Initiator::user("ops-user-1"), run.id).await.unwrap();
    worker.stop().await;
    let done = e.service.get(run.id).await.unwrap();
    assert_eq!((done.status, done.outcome), (RunStatus::Completed, RunOutcome::Cancelled), "{done:?}");
}

/// A run waiting for its next attempt is active: a second dispatch of its
/// operation in its scope returns it (one active run per scope), and the
/// reconciler, ten days on, leaves it alone; it then runs its attempt.
pub(crate) async fn a_waiting_run_holds_its_scope_and_the_reconciler_leaves_it_alone(stack: Stack) {
    let (e, clock) = manual_env(stack).await;
    let p = provider(0, 4).await;
    p.script(PAGE_1, busy(1));
    let run = dispatch_at(&e, "test.retrying", "contoso-prod", json!({}), None).await;
    let worker = e.start_worker(e.http_runner("w1", &p.providers));
    until_waiting(&e, run.id, 2, 0).await;
    worker.stop().await;
    let again = e
        .dispatcher
        .dispatch(DispatchRequest {
            available_at: None,
            operation: "test.retrying".into(),
            scope: Scope {
                workspace_id: "contoso".into(),
                environment_id: Some("contoso-prod".into()),
                ..Scope::default()
            },
            initiator: Initiator::user("ops-user-1"),
            source: SourceSurface::Cli,
            context: json!({}),
            params: json!({}),
        })
        .await
        .unwrap();
    match again {
        oprun_scheduler::DispatchOutcome::Dispatched { run: held, deduplicated, .. } => {
            assert!(deduplicated, "the waiting run holds the scope");
            assert_eq!(held.id, run.id);
        }
        other => panic!("{other:?}"),
    }
    clock.advance(chrono::Duration::days(10));
    let report = e.service.reconcile(&Initiator::user("oncall-1"), &ReconcileFilter::default(), false).await.unwrap();
    assert!(report.actions.iter().all(|a| a.run_id != run.id), "{report:?}");
    let still = e.service.get(run.id).await.unwrap();
    assert_eq!((still.status, still.attempt, still.outcome), (RunStatus::Queued, 2, RunOutcome::Pending), "{still:?}");
    let worker = e.start_worker(e.http_runner("w2", &p.providers));
    let done = e.until_completed(run.id, 20).await;
    worker.stop().await;
    assert_eq!((done.outcome, done.attempt), (RunOutcome::Succeeded, 2), "{done:?}");
}
