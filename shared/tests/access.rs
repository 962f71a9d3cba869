//! Access truth on both stores: applying a file, reauthorization against
//! current truth, and the tick record's once-only claim.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use oprun_shared::TickDecision;
use oprun_shared::access::{Decision, grantable_capabilities};
use oprun_shared::testing::{self, Backend, TestStore};
use oprun_shared::{AccessFile, Authorizer, Initiator, ReasonCode, Scope};
use tokio::sync::Barrier;

async fn applied(b: Backend) -> (TestStore, Authorizer) {
    let db = TestStore::new(b).await;
    db.access.apply_access(&testing::access_file()).await.unwrap();
    let auth = Authorizer::new(db.access.clone(), testing::catalog());
    (db, auth)
}

fn scope(ws: &str, env: Option<&str>) -> Scope {
    Scope { workspace_id: ws.into(), environment_id: env.map(Into::into), ..Scope::default() }
}

fn denied(d: Decision) -> Option<ReasonCode> {
    match d {
        Decision::Allowed => None,
        Decision::Denied { reason, .. } => Some(reason),
    }
}

fn edited(replace: &[(&str, &str)]) -> AccessFile {
    let mut text = testing::TEST_ACCESS.to_string();
    for (from, to) in replace {
        assert!(text.contains(from), "the test access file has no '{from}'");
        text = text.replacen(from, to, 1);
    }
    AccessFile::from_toml(&text, "edited", Some(&grantable_capabilities(&testing::catalog()))).unwrap()
}

async fn dispatch_decisions_follow_current_truth(b: Backend) {
    let (db, auth) = applied(b).await;
    let check = |actor: &'static str, op: &'static str, s: Scope| {
        let auth = auth.clone();
        async move { denied(auth.authorize_dispatch(actor, op, &s).await.unwrap()) }
    };
    assert_eq!(check("ops-user-1", "inventory.sync", scope("contoso", Some("contoso-prod"))).await, None);
    assert_eq!(check("ops-user-1", "report.build", scope("contoso", None)).await, None);
    assert_eq!(
        check("viewer-1", "inventory.sync", scope("contoso", Some("contoso-prod"))).await,
        Some(ReasonCode::ExecutionCapabilityMissing)
    );
    assert_eq!(
        check("ops-user-1", "inventory.sync", scope("fabrikam", Some("fabrikam-prod"))).await,
        Some(ReasonCode::ExecutionCapabilityMissing),
        "a role in contoso grants nothing in fabrikam"
    );
    assert_eq!(
        check("ghost", "inventory.sync", scope("contoso", Some("contoso-prod"))).await,
        Some(ReasonCode::ExecutionActorUnknown)
    );
    assert_eq!(
        check("ops-user-1", "inventory.sync", scope("contoso", Some("contoso-old"))).await,
        Some(ReasonCode::ExecutionEnvironmentNotOperable)
    );
    assert_eq!(
        check("ops-user-1", "inventory.sync", scope("contoso", Some("fabrikam-prod"))).await,
        Some(ReasonCode::ExecutionScopeChanged)
    );
    assert_eq!(
        check("ops-user-1", "inventory.sync", scope("contoso", Some("nowhere"))).await,
        Some(ReasonCode::ExecutionEnvironmentNotOperable)
    );
    assert_eq!(check("ops-user-1", "no.such.op", scope("contoso", None)).await, Some(ReasonCode::RunOperationUnknown));
    // tenant.audit uses no provider: an environment without a connection is fine.
    db.access
        .apply_access(&edited(&[(
            "[[provider_connections]]\nenvironment = \"contoso-prod\"\nprovider = \"graph\"\n",
            "",
        )]))
        .await
        .unwrap();
    assert_eq!(check("ops-user-1", "tenant.audit", scope("contoso", Some("contoso-prod"))).await, None);
    assert_eq!(
        check("ops-user-1", "inventory.sync", scope("contoso", Some("contoso-prod"))).await,
        Some(ReasonCode::ExecutionProviderConnectionUnusable)
    );
    let caps = auth.viewer("viewer-1", "contoso").await.unwrap();
    assert!(caps.can("runs.view") && !caps.can("runs.retry"));
    assert!(auth.viewer("viewer-1", "fabrikam").await.unwrap().capabilities.is_empty());
}

async fn reauthorize_sees_each_change_made_after_dispatch(b: Backend) {
    let (db, auth) = applied(b).await;
    let mut run = testing::run(oprun_shared::Clock::now(&*testing::clock()));
    run.initiator = Initiator::user("ops-user-1");
    run.workspace_id = "contoso".into();
    run.environment_id = Some("contoso-prod".into());
    assert!(auth.reauthorize(&run).await.unwrap().is_allowed());
    let cases: Vec<(Vec<(&str, &str)>, ReasonCode)> = vec![
        (vec![("operator = [\"inventory.sync\", ", "operator = [")], ReasonCode::ExecutionCapabilityMissing),
        (
            vec![(
                "id = \"contoso-prod\"\nworkspace = \"contoso\"",
                "id = \"contoso-prod\"\nworkspace = \"contoso\"\nstatus = \"suspended\"",
            )],
            ReasonCode::ExecutionEnvironmentNotOperable,
        ),
        (
            vec![("id = \"contoso-prod\"\nworkspace = \"contoso\"", "id = \"contoso-prod\"\nworkspace = \"fabrikam\"")],
            ReasonCode::ExecutionScopeChanged,
        ),
        (
            vec![(
                "environment = \"contoso-prod\"\nprovider = \"graph\"",
                "environment = \"contoso-prod\"\nprovider = \"graph\"\nstatus = \"consent_revoked\"",
            )],
            ReasonCode::ExecutionProviderConnectionUnusable,
        ),
        (
            vec![("display_name = \"Olga Operator\"", "display_name = \"Olga Operator\"\nstatus = \"disabled\"")],
            ReasonCode::ExecutionActorDisabled,
        ),
        (
            vec![("[[workspaces]]\nid = \"contoso\"", "[[workspaces]]\nid = \"contoso\"\nstatus = \"suspended\"")],
            ReasonCode::ExecutionWorkspaceInactive,
        ),
    ];
    for (edit, want) in cases {
        db.access.apply_access(&edited(&edit)).await.unwrap();
        assert_eq!(denied(auth.reauthorize(&run).await.unwrap()), Some(want), "after {edit:?}");
        db.access.apply_access(&testing::access_file()).await.unwrap();
        assert!(auth.reauthorize(&run).await.unwrap().is_allowed(), "restored after {edit:?}");
    }
}

async fn what_the_file_no_longer_lists_is_disabled_or_removed(b: Backend) {
    let (db, auth) = applied(b).await;
    let minimal = AccessFile::from_toml(
        "[roles]\nviewer = [\"runs.view\"]\n[[actors]]\nid = \"viewer-1\"\nkind = \"user\"\n\
         [[workspaces]]\nid = \"contoso\"\n[[memberships]]\nactor = \"viewer-1\"\nworkspace = \"contoso\"\nrole = \"viewer\"\n",
        "minimal",
        None,
    )
    .unwrap();
    let report = db.access.apply_access(&minimal).await.unwrap();
    assert_eq!((report.actors_disabled, report.workspaces_suspended, report.environments_offboarded), (2, 1, 4));
    assert_eq!(
        denied(auth.authorize_dispatch("ops-user-1", "report.build", &scope("contoso", None)).await.unwrap()),
        Some(ReasonCode::ExecutionActorDisabled)
    );
    assert_eq!(
        denied(auth.authorize_dispatch("svc-scheduler", "report.build", &scope("fabrikam", None)).await.unwrap()),
        Some(ReasonCode::ExecutionActorDisabled)
    );
    assert!(db.access.operable_environments("contoso").await.unwrap().is_empty());
    // Applying the same file again changes nothing more.
    let again = db.access.apply_access(&minimal).await.unwrap();
    assert_eq!((again.actors_disabled, again.workspaces_suspended, again.environments_offboarded), (0, 0, 0));
    db.access.apply_access(&testing::access_file()).await.unwrap();
    assert_eq!(db.access.operable_environments("contoso").await.unwrap(), vec!["contoso-dev", "contoso-prod"]);
}

async fn a_tick_is_claimed_by_exactly_one_of_many_schedulers(b: Backend) {
    let (db, _) = applied(b).await;
    let at: DateTime<Utc> = "2026-11-02T09:05:00Z".parse().unwrap();
    let now = oprun_shared::Clock::now(&*testing::clock());
    let barrier = Arc::new(Barrier::new(8));
    let mut tasks = vec![];
    for i in 0..8 {
        let (ticks, barrier) = (db.ticks.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            ticks.claim_tick("nightly", at, TickDecision::Claimed, &format!("sched-{i}"), now).await.unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
    let run_id = uuid::Uuid::now_v7();
    db.ticks
        .decide_tick("nightly", at, TickDecision::Fired, &[run_id], &serde_json::json!({"contoso-prod": "fired"}))
        .await
        .unwrap();
    assert_eq!(db.ticks.last_tick("nightly").await.unwrap(), Some(at));
    assert_eq!(db.ticks.last_tick("other").await.unwrap(), None);
    let ticks = db.ticks.ticks("nightly", 10).await.unwrap();
    assert_eq!(ticks.len(), 1);
    assert_eq!((ticks[0].decision, ticks[0].run_ids.clone()), (TickDecision::Fired, vec![run_id]));
    assert_eq!(ticks[0].scheduled_for, at);
}

macro_rules! both_stores {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Sqlite).await;
                }
            )*
        }
    };
}

both_stores!(
    dispatch_decisions_follow_current_truth,
    reauthorize_sees_each_change_made_after_dispatch,
    what_the_file_no_longer_lists_is_disabled_or_removed,
    a_tick_is_claimed_by_exactly_one_of_many_schedulers,
);
