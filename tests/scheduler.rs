//! Schedules: a tick fires once with two schedulers, missed ticks follow the
//! misfire policy after a restart, and an overlapping tick is recorded as
//! skipped — on Postgres + Redis and on one SQLite file. Time is a manual
//! clock; nothing sleeps to make a tick due.

#[path = "scheduler/at_scale.rs"]
mod at_scale;
mod common;

use std::sync::Arc;
use std::time::Duration;

use at_scale::{
    a_pause_holds_across_two_schedulers_and_a_backfill_fires_each_tick_once,
    a_refusal_repeated_over_100_ticks_is_one_blocked_run,
    five_hundred_blocked_runs_are_retried_by_filter_after_access_is_fixed,
};
use chrono::{DateTime, Utc};
use common::{Env, Stack};
use oprun_scheduler::config::ScheduleSpec;
use oprun_scheduler::{Dispatcher, Scheduler};
use oprun_shared::{Authorizer, Clock, JobQueue, ManualClock, RunFilter, TickDecision};

fn spec(extra: &str) -> ScheduleSpec {
    toml::from_str(&format!(
        "name = \"five\"\ncron = \"*/5 * * * *\"\noperation = \"test.fanout\"\nworkspace = \"contoso\"\n\
         environments = \"all\"\nactor = \"svc-scheduler\"\n{extra}"
    ))
    .unwrap()
}

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// A scheduler over its own connection pool, as a second process would have.
async fn scheduler(e: &Env, name: &str, spec: &ScheduleSpec, clock: Arc<ManualClock>) -> Scheduler {
    let db = oprun::config::StoreKind::open(&e.db.url, 4).await.unwrap();
    let service = Env::service_with(db.runs.clone(), clock.clone());
    let authorizer = Authorizer::new(db.access.clone(), common::catalog());
    let dispatcher = Dispatcher::new(service, authorizer, e.queue.clone() as Arc<dyn JobQueue>);
    Scheduler::new(
        std::slice::from_ref(spec),
        dispatcher,
        db.access.clone(),
        db.ticks.clone(),
        clock,
        name,
        Duration::from_secs(5),
    )
    .unwrap()
}

async fn two_schedulers_fire_every_tick_exactly_once(stack: Stack) {
    let e = Env::new(stack).await;
    let s = spec("overlap = \"allow\"");
    let clock = Arc::new(ManualClock::new(t("2026-11-02T08:59:58Z")));
    let a = scheduler(&e, "sched-a", &s, clock.clone()).await;
    let b = scheduler(&e, "sched-b", &s, clock.clone()).await;
    for minute in ["09:00:01", "09:05:02", "09:10:01"] {
        clock.set(t(&format!("2026-11-02T{minute}Z")));
        let (ra, rb) = tokio::join!(a.run_once(), b.run_once());
        let fired: Vec<_> = ra.unwrap().into_iter().chain(rb.unwrap()).collect();
        assert_eq!(fired.len(), 1, "one of the two took the tick: {fired:?}");
        assert_eq!(fired[0].decision, TickDecision::Fired);
        assert_eq!(fired[0].run_ids.len(), 4, "one run per operable contoso environment");
    }
    let ticks = e.db.ticks.ticks("five", 100).await.unwrap();
    assert_eq!(ticks.len(), 3);
    let filter = RunFilter { operation: Some("test.fanout".into()), limit: 100, ..Default::default() };
    assert_eq!(e.service.list(&filter).await.unwrap().len(), 3 * 4, "3 ticks × 4 environments, no duplicates");
}

async fn a_restart_after_missed_ticks_follows_the_misfire_policy(stack: Stack) {
    let e = Env::new(stack).await;
    for (policy, window, want_fired) in [("skip", "10m", 0), ("fire_once", "10m", 1), ("fire_once", "2m", 0)] {
        let s = ScheduleSpec {
            name: format!("mf-{policy}-{window}"),
            ..spec(&format!("misfire = \"{policy}\"\nmisfire_window = \"{window}\"\noverlap = \"allow\""))
        };
        let clock = Arc::new(ManualClock::new(t("2026-11-02T08:59:58Z")));
        let first = scheduler(&e, "before", &s, clock.clone()).await;
        clock.set(t("2026-11-02T09:00:01Z"));
        assert_eq!(first.run_once().await.unwrap()[0].decision, TickDecision::Fired);
        drop(first);
        // Down from 09:00 to 09:33: ticks 09:05 … 09:30 were missed.
        clock.set(t("2026-11-02T09:33:00Z"));
        let restarted = scheduler(&e, "after", &s, clock.clone()).await;
        let decided = restarted.run_once().await.unwrap();
        let at: Vec<_> = decided.iter().map(|d| (d.scheduled_for, d.decision)).collect();
        let mut want: Vec<_> = ["09:05", "09:10", "09:15", "09:20", "09:25"]
            .iter()
            .map(|m| (t(&format!("2026-11-02T{m}:00Z")), TickDecision::SkippedMisfire))
            .collect();
        let last = if want_fired == 1 { TickDecision::Fired } else { TickDecision::SkippedMisfire };
        want.push((t("2026-11-02T09:30:00Z"), last));
        assert_eq!(at, want, "misfire = {policy}, window = {window}");
        if want_fired == 1 {
            assert_eq!(e.db.ticks.ticks(&s.name, 1).await.unwrap()[0].details["catch_up"], true);
        }
        assert!(restarted.run_once().await.unwrap().is_empty(), "nothing is decided twice");
    }
}

/// `test.fanout` has `dedup = "none"`: only the overlap policy (not a dedup
/// key) can keep a second run of the busy scope from being dispatched.
async fn a_tick_while_the_scope_is_busy_is_recorded_as_skipped_overlap(stack: Stack) {
    let e = Env::new(stack).await;
    let s = ScheduleSpec {
        operation: "test.fanout".into(),
        environment: Some("contoso-prod".into()),
        environments: None,
        ..spec("overlap = \"skip\"")
    };
    let clock = Arc::new(ManualClock::new(t("2026-11-02T08:59:58Z")));
    let sched = scheduler(&e, "s", &s, clock.clone()).await;
    clock.set(t("2026-11-02T09:00:01Z"));
    let first = sched.run_once().await.unwrap();
    assert_eq!(first[0].decision, TickDecision::Fired);
    clock.set(t("2026-11-02T09:05:01Z"));
    let second = sched.run_once().await.unwrap();
    assert_eq!(second[0].decision, TickDecision::SkippedOverlap);
    assert_eq!(second[0].run_ids, first[0].run_ids, "the tick names the active run it deferred to");
    let tick = e.db.ticks.ticks("five", 1).await.unwrap().remove(0);
    assert_eq!(
        tick.details["scopes"]["contoso-prod"]["active_run"],
        serde_json::json!(first[0].run_ids[0]),
        "{tick:?}"
    );
    let filter = RunFilter { operation: Some("test.fanout".into()), limit: 100, ..Default::default() };
    assert_eq!(e.service.list(&filter).await.unwrap().len(), 1, "no second run while the first is active");

    // The same schedule with `overlap = "allow"` dispatches a second run of
    // the busy scope: the operation itself does not deduplicate.
    let allow = ScheduleSpec { name: "five-allow".into(), overlap: oprun_scheduler::config::OverlapPolicy::Allow, ..s };
    clock.set(t("2026-11-02T09:09:58Z"));
    let sched = scheduler(&e, "s", &allow, clock.clone()).await;
    clock.set(t("2026-11-02T09:10:01Z"));
    let third = sched.run_once().await.unwrap();
    assert_eq!(third[0].decision, TickDecision::Fired, "{third:?}");
    assert_ne!(third[0].run_ids, first[0].run_ids, "{third:?}");
}

/// A scheduler over `store` (a store with injected faults, say).
async fn scheduler_over(
    e: &Env,
    name: &str,
    spec: &ScheduleSpec,
    clock: Arc<ManualClock>,
    store: Arc<dyn oprun_shared::RunStore>,
) -> Scheduler {
    let service = Env::service_with(store, clock.clone());
    let authorizer = Authorizer::new(e.db.access.clone(), common::catalog());
    let dispatcher = Dispatcher::new(service, authorizer, e.queue.clone() as Arc<dyn JobQueue>);
    Scheduler::new(
        std::slice::from_ref(spec),
        dispatcher,
        e.db.access.clone(),
        e.db.ticks.clone(),
        clock,
        name,
        Duration::from_secs(5),
    )
    .unwrap()
}

/// The `test.fanout` runs of the schedule `five`'s tick at `at`, by environment.
async fn runs_of_tick(e: &Env, at: DateTime<Utc>) -> Vec<String> {
    let filter = RunFilter { operation: Some("test.fanout".into()), limit: 100, ..Default::default() };
    let mut envs: Vec<String> = (e.service.list(&filter).await.unwrap().into_iter())
        .filter(|r| r.context["scheduled_for"] == serde_json::json!(at))
        .map(|r| r.environment_id.unwrap_or_default())
        .collect();
    envs.sort();
    envs
}

/// A dispatch that fails half-way through a fan-out leaves the tick
/// claimed with what it dispatched recorded; the next pass drives it to a
/// decision, dispatching only the scopes that were left, once each.
async fn a_tick_whose_dispatch_failed_half_way_is_finished_by_the_next_pass(stack: Stack) {
    let e = Env::new(stack).await;
    let s = spec("overlap = \"allow\"");
    let clock = Arc::new(ManualClock::new(t("2026-11-02T08:59:58Z")));
    let faulty = Arc::new(oprun_shared::testing::FaultyStore::new(e.db.store.clone()).failing_insert(2));
    let sched = scheduler_over(&e, "sched-a", &s, clock.clone(), faulty.clone()).await;
    clock.set(t("2026-11-02T09:00:01Z"));
    let first = sched.run_once().await.unwrap();
    assert!(first.is_empty(), "the pass failed mid-tick: {first:?}");
    assert_eq!(faulty.refused(), 1, "the second dispatch met the store failure");
    let at = t("2026-11-02T09:00:00Z");
    let tick = e.db.ticks.ticks("five", 10).await.unwrap().remove(0);
    assert_eq!((tick.scheduled_for, tick.decision), (at, TickDecision::Claimed));
    assert_eq!(tick.run_ids.len(), 1, "what it dispatched is recorded: {tick:?}");

    clock.set(t("2026-11-02T09:00:03Z"));
    let next = sched.run_once().await.unwrap();
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!((next[0].scheduled_for, next[0].decision), (at, TickDecision::Fired));
    assert_eq!(next[0].run_ids.len(), 4, "every scope of the tick, once: {next:?}");
    let tick = e.db.ticks.ticks("five", 10).await.unwrap().remove(0);
    assert_eq!(tick.decision, TickDecision::Fired);
    assert_eq!(runs_of_tick(&e, at).await.len(), 4, "no scope dispatched twice");
    let mut unique = tick.run_ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{tick:?}");
}

/// A scheduler that died between a tick's claim and its decision (here
/// after dispatching one scope, before recording it) leaves the tick
/// `claimed`; once the claim is older than the abandonment timeout another
/// scheduler takes it over: the scope already dispatched is found by the
/// runs' own record of their tick and not dispatched again.
async fn a_tick_abandoned_by_a_dead_scheduler_is_taken_over_and_no_scope_runs_twice(stack: Stack) {
    let e = Env::new(stack).await;
    let s = spec("overlap = \"allow\"");
    let at = t("2026-11-02T09:00:00Z");
    let clock = Arc::new(ManualClock::new(t("2026-11-02T09:00:01Z")));
    // The dead scheduler's last acts: the claim, and one dispatch of its tick.
    assert!(e.db.ticks.claim_tick("five", at, TickDecision::Claimed, "sched-dead", clock.now()).await.unwrap());
    let dead = Env::service_with(e.db.store.clone(), clock.clone());
    let req = oprun_shared::DispatchRequest {
        initiator: oprun_shared::Initiator::schedule("svc-scheduler"),
        source: oprun_shared::SourceSurface::Scheduler,
        context: serde_json::json!({ "schedule": "five", "scheduled_for": at, "scheduler": "sched-dead" }),
        ..request("test.fanout", "contoso", "contoso-prod")
    };
    let orphan = dead.dispatch(req).await.unwrap().run.id;

    let survivor = scheduler(&e, "sched-b", &s, clock.clone()).await;
    clock.set(t("2026-11-02T09:01:00Z"));
    assert!(survivor.run_once().await.unwrap().is_empty(), "a young claim may still be alive: left alone");
    assert_eq!(e.db.ticks.ticks("five", 10).await.unwrap()[0].decision, TickDecision::Claimed);

    clock.set(t("2026-11-02T09:03:00Z"));
    let decided = survivor.run_once().await.unwrap();
    let taken: Vec<_> = decided.iter().filter(|d| d.scheduled_for == at).collect();
    assert_eq!(taken.len(), 1, "{decided:?}");
    assert_eq!(taken[0].decision, TickDecision::Fired);
    assert!(taken[0].run_ids.contains(&orphan), "the orphan run is the tick's: {taken:?}");
    let tick = e.db.ticks.ticks("five", 10).await.unwrap().into_iter().find(|t| t.scheduled_for == at).unwrap();
    assert_eq!((tick.decision, tick.decided_by.as_str()), (TickDecision::Fired, "sched-b"));
    assert_eq!(tick.details["taken_over"], serde_json::json!(true));
    assert_eq!(
        runs_of_tick(&e, at).await,
        vec!["contoso-dev", "contoso-moving", "contoso-prod", "contoso-revoked"],
        "one run per scope: the orphan's scope was not dispatched again"
    );
}

/// A run of `operation` in `workspace`/`environment` claimed an hour ago
/// by a worker that vanished (`worker`): stale.
async fn stale_run(e: &Env, workspace: &str, environment: &str, worker: &str) -> uuid::Uuid {
    let past = Arc::new(ManualClock::new(Utc::now() - chrono::Duration::hours(1)));
    let dead = Env::service_with(e.db.store.clone(), past);
    let id = dead.dispatch(request("test.count", workspace, environment)).await.unwrap().run.id;
    dead.claim(id, worker).await.unwrap();
    id
}

/// A dispatch of `operation` in `workspace`/`environment` by the scheduler's actor.
fn request(operation: &str, workspace: &str, environment: &str) -> oprun_shared::DispatchRequest {
    oprun_shared::DispatchRequest {
        available_at: None,
        operation: operation.into(),
        scope: oprun_shared::Scope {
            workspace_id: workspace.into(),
            environment_id: Some(environment.into()),
            ..Default::default()
        },
        initiator: oprun_shared::Initiator::service("svc-scheduler"),
        source: oprun_shared::SourceSurface::Cli,
        context: serde_json::json!({}),
        params: serde_json::json!({}),
    }
}

/// An operator's reconcile reaches only the workspaces where it holds
/// `runs.reconcile` now: without a workspace it covers exactly those (not
/// a suspended one, not another tenant's), a refusal names no workspace the
/// caller did not name, and an actor that may reconcile nowhere (say, once
/// every workspace is suspended) is refused instead of reconciling all.
async fn an_operator_reconcile_stays_within_the_workspaces_it_may_reconcile(stack: Stack) {
    let e = Env::new(stack).await;
    let operator = oprun_scheduler::Operator::new(e.dispatcher.clone());
    let all = oprun_shared::ReconcileFilter::default();
    let ops = oprun_shared::Initiator::user("ops-user-1");
    let (contoso, fabrikam) = (
        stale_run(&e, "contoso", "contoso-prod", "vanished-worker").await,
        stale_run(&e, "fabrikam", "fabrikam-prod", "vanished-worker").await,
    );
    let status = |id| {
        let service = e.service.clone();
        async move { service.get(id).await.unwrap().status }
    };

    // ops-user-1 holds runs.reconcile in contoso only.
    let report = operator.reconcile(&ops, &all, false).await.expect("reconcile within contoso");
    assert_eq!(report.to_push(), vec![contoso], "{report:?}");
    assert_eq!(status(fabrikam).await, oprun_shared::RunStatus::Running, "another tenant's run is not touched");

    // Refusals name nothing the caller did not name.
    let viewer = oprun_shared::Initiator::user("viewer-1");
    let refused = operator.reconcile(&viewer, &all, true).await.unwrap_err().to_string();
    assert!(!refused.contains("contoso") && !refused.contains("fabrikam"), "{refused}");
    let named = oprun_shared::ReconcileFilter { workspace_id: Some("fabrikam".into()), ..Default::default() };
    let refused = operator.reconcile(&ops, &named, true).await.unwrap_err().to_string();
    assert!(refused.contains("fabrikam") && !refused.contains("contoso"), "{refused}");

    // fabrikam is suspended (no longer in the access file): fab-user may not
    // reconcile it, and ops-user-1's reconcile still leaves it alone.
    let without_fabrikam = common::ACCESS
        .replace("[[workspaces]]\nid = \"fabrikam\"\n", "")
        .replace("[[environments]]\nid = \"fabrikam-prod\"\nworkspace = \"fabrikam\"\n", "")
        .replace("[[memberships]]\nactor = \"svc-scheduler\"\nworkspace = \"fabrikam\"\nrole = \"automation\"\n", "")
        .replace("[[memberships]]\nactor = \"fab-user\"\nworkspace = \"fabrikam\"\nrole = \"operator\"\n", "")
        .replace("[[provider_connections]]\nenvironment = \"fabrikam-prod\"\nprovider = \"graph\"\n", "");
    assert!(!without_fabrikam.contains("fabrikam"), "{without_fabrikam}");
    e.db.access.apply_access(&common::access(&without_fabrikam)).await.unwrap();
    let again = stale_run(&e, "contoso", "contoso-dev", "vanished-worker").await;
    let report = operator.reconcile(&ops, &all, false).await.expect("reconcile within contoso");
    assert_eq!(report.to_push(), vec![again], "{report:?}");
    assert_eq!(status(fabrikam).await, oprun_shared::RunStatus::Running, "a suspended workspace's run is not touched");
    let fab = oprun_shared::Initiator::user("fab-user");
    assert!(operator.reconcile(&fab, &all, false).await.is_err(), "fab-user may reconcile nowhere now");

    // No active workspace at all: nobody may reconcile everything.
    let actors_only: String = common::ACCESS.split("[[workspaces]]").next().unwrap().to_string();
    e.db.access.apply_access(&common::access(&actors_only)).await.unwrap();
    let err = operator.reconcile(&ops, &all, false).await.unwrap_err();
    assert!(matches!(err, oprun_scheduler::ActionError::Forbidden(_)), "{err:?}");
    assert_eq!(status(fabrikam).await, oprun_shared::RunStatus::Running);
}

/// The newest tick of `fan` still `claimed` with some runs, not in `seen`.
async fn first_claimed_with_runs(ticks: &dyn oprun_shared::TickStore, seen: &[DateTime<Utc>]) -> Option<DateTime<Utc>> {
    let ticks = ticks.ticks("fan", 20).await.unwrap();
    ticks
        .into_iter()
        .find(|t| t.decision == TickDecision::Claimed && !t.run_ids.is_empty() && !seen.contains(&t.scheduled_for))
        .map(|t| t.scheduled_for)
}

/// `oprun scheduler` processes SIGKILLed while they are dispatching a
/// tick's fan-out (the kill waits until the tick row says `claimed` and
/// some of its runs exist): after each kill the next scheduler takes the
/// abandoned tick over, so in the end every tick has a decision, the
/// taken-over ticks have one run in each environment, and no environment
/// was dispatched twice for one tick. Postgres (the production store).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedulers_killed_between_a_ticks_claim_and_its_decision_leave_no_tick_undecided() {
    const ENVS: usize = 150;
    let mut access_text = common::ACCESS.to_string();
    for i in 0..ENVS {
        access_text.push_str(&format!(
            "[[environments]]\nid = \"fan-{i:03}\"\nworkspace = \"contoso\"\n\
             [[provider_connections]]\nenvironment = \"fan-{i:03}\"\nprovider = \"graph\"\n"
        ));
    }
    let e = Env::new(Stack::PostgresRedis).await;
    e.db.access.apply_access(&common::access(&access_text)).await.unwrap();
    let operable = e.db.access.operable_environments("contoso").await.unwrap().len();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("oprun.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[scheduler]\ntick = \"100ms\"\nreconcile_interval = \"1h\"\nabandoned_tick_after = \"2s\"\n\
             [[schedules]]\nname = \"fan\"\ncron = \"* * * * * *\"\noperation = \"test.fanout\"\n\
             workspace = \"contoso\"\nenvironments = \"all\"\nactor = \"svc-scheduler\"\noverlap = \"allow\"\n",
            common::scheduler_config(&e, dir.path(), "http://127.0.0.1:9")
        ),
    )
    .unwrap();
    let log = common::process_log(&dir.path().join("scheduler.log"), "scheduler-kill");
    let ticks = e.db.ticks.clone();
    let claimed_with_runs = |seen: Vec<DateTime<Utc>>| {
        let ticks = ticks.clone();
        async move { first_claimed_with_runs(&*ticks, &seen).await }
    };
    let mut killed_mid_tick = Vec::new();
    for kill in 0..3 {
        let mut child = common::Reaped(common::spawn_oprun("scheduler", &cfg, &log, "info"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let at = loop {
            if let Some(at) = claimed_with_runs(killed_mid_tick.clone()).await {
                break at;
            }
            assert!(child.0.try_wait().unwrap().is_none(), "scheduler {kill} exited on its own; see {}", log.display());
            assert!(std::time::Instant::now() < deadline, "no tick was ever seen mid-dispatch; see {}", log.display());
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        child.0.kill().unwrap(); // SIGKILL, mid-tick
        child.0.wait().unwrap();
        killed_mid_tick.push(at);
    }
    // A survivor finishes what the dead left, then stops when asked.
    let mut survivor = common::Reaped(common::spawn_oprun("scheduler", &cfg, &log, "info"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ticks = e.db.ticks.ticks("fan", 1000).await.unwrap();
        let left: Vec<_> = ticks
            .iter()
            .filter(|t| t.decision == TickDecision::Claimed && killed_mid_tick.contains(&t.scheduled_for))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ticks still undecided: {left:?}; see {}", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = survivor.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = common::exit_within(&mut survivor, 20).await;
    assert!(status.success(), "the survivor stops cleanly on SIGTERM: {status}");

    let ticks = e.db.ticks.ticks("fan", 1000).await.unwrap();
    let undecided: Vec<_> = ticks.iter().filter(|t| t.decision == TickDecision::Claimed).collect();
    assert!(undecided.is_empty(), "every tick has a decision: {undecided:?}");
    let mut per_tick_env: std::collections::BTreeMap<(String, String), usize> = Default::default();
    let mut filter = RunFilter { operation: Some("test.fanout".into()), limit: 1000, ..Default::default() };
    loop {
        let page = e.service.list(&filter).await.unwrap();
        for r in &page {
            let at = r.context["scheduled_for"].as_str().unwrap_or_default().to_string();
            *per_tick_env.entry((at, r.environment_id.clone().unwrap_or_default())).or_default() += 1;
        }
        match page.last() {
            Some(last) if page.len() == 1000 => filter.before = Some(last.id),
            _ => break,
        }
    }
    let twice: Vec<_> = per_tick_env.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "no environment dispatched twice for one tick: {twice:?}");
    for at in &killed_mid_tick {
        let tick = ticks.iter().find(|t| t.scheduled_for == *at).unwrap();
        assert_eq!(tick.decision, TickDecision::Fired, "{tick:?}");
        assert_eq!(tick.details["taken_over"], serde_json::json!(true), "{tick:?}");
        assert_eq!(tick.run_ids.len(), operable, "one run per operable environment: {tick:?}");
        let key = serde_json::to_value(at).unwrap().as_str().unwrap().to_string();
        let runs = per_tick_env.iter().filter(|((t, _), _)| *t == key).count();
        assert_eq!(runs, operable, "the killed tick {at} has a run in every environment");
    }
}

/// The schedule and the reconciler run side by side: a reconcile pass that
/// waits (here on a row lock another transaction holds on a stale run) does
/// not hold the ticks back. On one loop taking turns, the schedule stopped
/// until the reconcile pass ended, and its ticks were then missed.
/// Postgres only: on SQLite a held write lock stops every writer, the
/// tick's dispatch included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconcile_pass_waiting_on_a_locked_run_does_not_hold_the_ticks_back() {
    let e = Env::new(Stack::PostgresRedis).await;
    // A run claimed an hour ago by a worker that died: stale.
    let stale = stale_run(&e, "contoso", "contoso-prod", "dead-worker").await;
    // Another transaction holds the stale run's row: the reconciler's write waits.
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&e.db.url).await.unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM operation_runs WHERE id = $1 FOR UPDATE")
        .bind(stale)
        .execute(&mut *holder)
        .await
        .unwrap();

    let s = ScheduleSpec { name: "every-second".into(), cron: "* * * * * *".into(), ..spec("overlap = \"allow\"") };
    let db = oprun::config::StoreKind::open(&e.db.url, 8).await.unwrap();
    let sched = Scheduler::new(
        std::slice::from_ref(&s),
        e.dispatcher.clone(),
        db.access.clone(),
        db.ticks.clone(),
        Arc::new(oprun_shared::SystemClock),
        "side-by-side",
        Duration::from_secs(2),
    )
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let loops = tokio::spawn(oprun_scheduler::run_loops(
        Some(sched),
        e.dispatcher.clone(),
        oprun_shared::Initiator::service("svc-reconciler"),
        Duration::from_millis(100),
        Duration::from_millis(100),
        None,
        async move {
            let _ = stop_rx.await;
        },
    ));
    // The reconcile pass is waiting on the held row ...
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *holder).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))")
                .bind(holder_pid)
                .fetch_one(&pool)
                .await
                .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the reconcile pass never reached the locked run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting_since = Utc::now();
    // ... and ticks keep firing meanwhile: 3 due after it began to wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let decisions = loop {
        let ticks = e.db.ticks.ticks("every-second", 100).await.unwrap();
        let decided: Vec<_> = ticks.iter().filter(|t| t.decision != TickDecision::Claimed).collect();
        let bad: Vec<_> = decided.iter().filter(|t| t.decision != TickDecision::Fired).collect();
        assert!(bad.is_empty(), "every tick fired while the reconcile pass waited: {bad:?}");
        let fired_since = decided.iter().filter(|t| t.scheduled_for > waiting_since).count();
        if fired_since >= 3 {
            break decided.iter().map(|t| t.decision).collect::<Vec<TickDecision>>();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {fired_since} ticks fired in 10 s while the reconcile pass waited: {ticks:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(decisions.len() >= 3, "{decisions:?}");
    let still = e.service.get(stale).await.unwrap();
    assert_eq!(still.status, oprun_shared::RunStatus::Running, "the reconcile pass is still waiting");

    // Released: the waiting pass requeues the run, and the loops stop when asked.
    holder.rollback().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while e.service.get(stale).await.unwrap().status != oprun_shared::RunStatus::Queued {
        assert!(std::time::Instant::now() < deadline, "the reconciler did not requeue the stale run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), loops).await.expect("the loops stop").unwrap();
}

both_stacks!(
    five_hundred_blocked_runs_are_retried_by_filter_after_access_is_fixed,
    a_pause_holds_across_two_schedulers_and_a_backfill_fires_each_tick_once,
    a_refusal_repeated_over_100_ticks_is_one_blocked_run,
    two_schedulers_fire_every_tick_exactly_once,
    a_restart_after_missed_ticks_follows_the_misfire_policy,
    a_tick_while_the_scope_is_busy_is_recorded_as_skipped_overlap,
    a_tick_whose_dispatch_failed_half_way_is_finished_by_the_next_pass,
    a_tick_abandoned_by_a_dead_scheduler_is_taken_over_and_no_scope_runs_twice,
    an_operator_reconcile_stays_within_the_workspaces_it_may_reconcile,
);
