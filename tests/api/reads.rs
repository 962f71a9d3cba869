//! Reads: schedules and their recent ticks by visibility, a run's checkpoint shown to workspace admins only.

use oprun_shared::{Clock, SystemClock};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{api, api_with};
use crate::common::{ACCESS, Stack, access};

pub(crate) async fn schedules_show_recent_decisions_in_visible_workspaces_only(stack: Stack) {
    let spec = |name: &str, ws: &str, env: &str| -> oprun_scheduler::config::ScheduleSpec {
        toml::from_str(&format!(
            "name = \"{name}\"\ncron = \"*/5 * * * *\"\noperation = \"test.count\"\nworkspace = \"{ws}\"\n\
             environment = \"{env}\"\nactor = \"svc-scheduler\"\n"
        ))
        .unwrap()
    };
    let a = api_with(
        stack,
        vec![spec("contoso-sync", "contoso", "contoso-prod"), spec("fab-sync", "fabrikam", "fabrikam-prod")],
    )
    .await;
    let run = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.count", json!({})).await;
    let worker = a.e.start_worker(a.e.runner("w1"));
    a.e.until_completed(run.id, 30).await;
    worker.stop().await;
    let ticks = &a.e.db.ticks;
    let t1: chrono::DateTime<chrono::Utc> = "2026-11-02T09:00:00Z".parse().unwrap();
    let t2 = t1 + chrono::Duration::minutes(5);
    let now = SystemClock.now();
    ticks.claim_tick("contoso-sync", t1, oprun_shared::TickDecision::SkippedMisfire, "s", now).await.unwrap();
    ticks.claim_tick("contoso-sync", t2, oprun_shared::TickDecision::Claimed, "s", now).await.unwrap();
    ticks.decide_tick("contoso-sync", t2, oprun_shared::TickDecision::Fired, &[run.id], &json!({})).await.unwrap();
    // The schedulers settle ticks into the stored streak as their runs end
    // (tests/scheduler.rs drives that); here, as they would have.
    assert!(ticks.settle_ticks("contoso-sync", &[(t1, Some(false)), (t2, Some(true))], now).await.unwrap());
    let (ops, _) = a.token("ops-user-1", None).await;
    let (status, v) = a.call("GET", "/v1/schedules", Some(&ops), None).await;
    assert_eq!(status, StatusCode::OK);
    let list = v["schedules"].as_array().unwrap();
    assert_eq!(list.len(), 1, "fabrikam's schedule is not visible: {v}");
    assert_eq!(list[0]["name"], "contoso-sync");
    let decisions: Vec<&str> =
        list[0]["recent_ticks"].as_array().unwrap().iter().map(|t| t["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, vec!["fired", "skipped_misfire"]);
    assert_eq!(list[0]["consecutive_succeeded_ticks"], 1);
    assert_eq!(list[0]["clean_streak"], 1);
    assert_eq!(list[0]["paused"], Value::Null);
    // Pausing needs schedules.manage there: the viewer is refused, the
    // operator pauses it, a schedule of another tenant is not found.
    let (viewer, _) = a.token("viewer-1", None).await;
    let (status, v) = a.call("POST", "/v1/schedules/contoso-sync/pause", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, v) = a.call("POST", "/v1/schedules/fab-sync/pause", Some(&ops), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) =
        a.call("POST", "/v1/schedules/contoso-sync/pause", Some(&ops), Some(r#"{"note": "outage"}"#)).await;
    assert_eq!((status, v["changed"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    let (status, v) = a.call("POST", "/v1/schedules/contoso-sync/pause", Some(&ops), Some(r#"{"nope": 1}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (_, v) = a.call("GET", "/v1/schedules", Some(&ops), None).await;
    assert_eq!(v["schedules"][0]["paused"]["note"], "outage", "{v}");
    let (status, v) = a.call("POST", "/v1/schedules/contoso-sync/resume", Some(&ops), None).await;
    assert_eq!((status, v["changed"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    // One schedule; another tenant's is not found.
    let (status, v) = a.call("GET", "/v1/schedules/contoso-sync", Some(&ops), None).await;
    assert_eq!((status, v["name"].as_str()), (StatusCode::OK, Some("contoso-sync")), "{v}");
    let (status, _) = a.call("GET", "/v1/schedules/fab-sync", Some(&ops), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Backfill 08:00–08:20: five unrecorded ticks, a dry run first.
    let range = r#""from": "2026-11-02T08:00:00Z", "to": "2026-11-02T08:20:00Z""#;
    let path = "/v1/schedules/contoso-sync/backfill";
    let (status, v) = a.call("POST", path, Some(&ops), Some(&format!("{{{range}, \"dry_run\": true}}"))).await;
    assert_eq!((status, v["ticks"].as_array().map(Vec::len)), (StatusCode::OK, Some(5)), "{v}");
    let (status, v) = a.call("POST", path, Some(&viewer), Some(&format!("{{{range}}}"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, v) = a.call("POST", path, Some(&ops), Some(r#"{"from": "yesterday"}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (status, v) = a.call("POST", path, Some(&ops), Some(&format!("{{{range}}}"))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["ticks"].as_array().unwrap().iter().all(|t| t["decision"].is_string()), "{v}");
    let (_, again) = a.call("POST", path, Some(&ops), Some(&format!("{{{range}}}"))).await;
    assert!(again["ticks"].as_array().unwrap().iter().all(|t| t["decision"].is_null()), "each tick once: {again}");
    // The audit log: the workspace's administrative acts for a holder of
    // audit.view there; nothing for the viewer.
    let (status, v) = a.call("GET", "/v1/audit?admin=true&action=schedule.*&limit=100", Some(&ops), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let actions: Vec<&str> = v["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for want in ["schedule.pause", "schedule.resume", "schedule.backfill"] {
        assert!(actions.contains(&want), "{want} in {actions:?}");
    }
    let (status, v) = a.call("GET", "/v1/audit", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, v) = a.call("GET", "/v1/audit?limit=0", Some(&ops), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
}

/// Filters on `GET /v1/runs` and cancel by filter: an empty filter is
/// refused, a dry run changes nothing, another tenant's runs are never
/// matched, each run is audited with the caller.
pub(crate) async fn runs_are_filtered_and_cancelled_by_filter(stack: Stack) {
    let a = api(stack).await;
    let mine = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.fanout", json!({})).await;
    let other_env = a.dispatch("ops-user-1", "contoso", "contoso-dev", "test.fanout", json!({})).await;
    let theirs = a.dispatch("fab-user", "fabrikam", "fabrikam-prod", "test.fanout", json!({})).await;
    let (ops, _) = a.token("ops-user-1", None).await;
    let ids = |v: &Value| -> Vec<String> {
        v["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
    };
    let (status, v) =
        a.call("GET", "/v1/runs?environment=contoso-prod&initiator=user:ops-user-1", Some(&ops), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(ids(&v), vec![mine.id.to_string()]);
    let (status, v) = a.call("GET", "/v1/runs?created_after=yesterday", Some(&ops), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (status, v) = a.call("POST", "/v1/runs/cancel", Some(&ops), Some("{}")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "an empty filter would act on every run: {v}");
    let body = r#"{"operation": "test.fanout", "status": "queued", "dry_run": true}"#;
    let (status, v) = a.call("POST", "/v1/runs/cancel", Some(&ops), Some(body)).await;
    assert_eq!((status, v["matched"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
    assert!(v["runs"].as_array().unwrap().iter().all(|r| r["run_id"] != theirs.id.to_string()), "{v}");
    let body = r#"{"operation": "test.fanout", "status": "queued"}"#;
    let (status, v) = a.call("POST", "/v1/runs/cancel", Some(&ops), Some(body)).await;
    assert_eq!((status, v["matched"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
    for id in [mine.id, other_env.id] {
        let run = a.e.service.get(id).await.unwrap();
        assert_eq!(run.outcome, oprun_shared::RunOutcome::Cancelled);
        let trail = a.e.service.audit(id).await.unwrap();
        assert_eq!(trail.last().unwrap().entry.actor.id, "ops-user-1");
    }
    assert_eq!(a.e.service.get(theirs.id).await.unwrap().status, oprun_shared::RunStatus::Queued);
    let (viewer, _) = a.token("viewer-1", None).await;
    let (status, v) = a.call("POST", "/v1/runs/retry", Some(&viewer), Some(r#"{"outcome": "blocked"}"#)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
}

/// The access truth plus `admin-1`, who holds `access.manage` in contoso.
fn with_workspace_admin() -> String {
    let mut text = ACCESS.replacen("[roles]\n", "[roles]\nadmin = [\"runs.view\", \"access.manage\"]\n", 1);
    text.push_str("\n[[actors]]\nid = \"admin-1\"\nkind = \"user\"\n");
    text.push_str("[[memberships]]\nactor = \"admin-1\"\nworkspace = \"contoso\"\nrole = \"admin\"\n");
    text
}

/// A checkpoint can hold provider paging links: `GET /v1/runs/{id}` shows it
/// only to a viewer holding `access.manage` in the run's workspace; everyone
/// else sees whether there is one.
pub(crate) async fn a_run_s_checkpoint_is_shown_only_to_workspace_admins(stack: Stack) {
    let a = api(stack).await;
    a.e.db.access.apply_access(&access(&with_workspace_admin())).await.unwrap();
    let run = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.fanout", json!({})).await;
    let bare = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.fanout", json!({})).await;
    let claimed = a.e.service.claim(run.id, "w1").await.unwrap();
    let lease = oprun_shared::Lease::of(&claimed).unwrap();
    let checkpoint = json!({ "next": "https://graph.test/v1.0/devices?page=2&$skiptoken=c2tpcA" });
    let counts = oprun_shared::SummaryCounts::new();
    a.e.service.progress(&lease, "test.fanout", counts, Some(checkpoint.clone())).await.unwrap();
    for (actor, shown) in [("viewer-1", false), ("ops-user-1", false), ("admin-1", true)] {
        let (token, _) = a.token(actor, None).await;
        let (status, v) = a.call("GET", &format!("/v1/runs/{}", run.id), Some(&token), None).await;
        assert_eq!(status, StatusCode::OK, "{actor}: {v}");
        assert_eq!(v["has_checkpoint"], true, "{actor}: {v}");
        if shown {
            assert_eq!(v["checkpoint"], checkpoint, "{actor}");
        } else {
            assert_eq!(v["checkpoint"], Value::Null, "{actor}");
            assert!(!v.to_string().contains("skiptoken"), "{actor} sees the checkpoint: {v}");
        }
        let (_, v) = a.call("GET", &format!("/v1/runs/{}", bare.id), Some(&token), None).await;
        assert_eq!((&v["has_checkpoint"], &v["checkpoint"]), (&json!(false), &Value::Null), "{actor}: {v}");
    }
}
