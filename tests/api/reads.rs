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
