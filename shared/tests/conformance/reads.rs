//! Reads: listing by visibility, status and outcome, paged by cursor.

use oprun_shared::testing::Backend;
use oprun_shared::{DispatchRequest, RunFilter, RunOutcome, Scope};

use super::{env, lease, oncall, sync_req};

pub(crate) async fn list_filters_by_visibility_status_outcome_and_pages_by_cursor(b: Backend) {
    let e = env(b).await;
    let mut ids = vec![];
    for (ws, env_id) in [("contoso", "e1"), ("contoso", "e2"), ("fabrikam", "f1"), ("contoso", "e3")] {
        let req = DispatchRequest {
            scope: Scope { workspace_id: ws.into(), environment_id: Some(env_id.into()), ..Scope::default() },
            ..sync_req(env_id)
        };
        ids.push(e.svc.dispatch(req).await.unwrap().run.id);
    }
    e.svc.cancel(ids[0], &oncall()).await.unwrap();
    let visible = RunFilter { visible_workspaces: Some(vec!["contoso".into()]), limit: 100, ..Default::default() };
    let runs = e.svc.list(&visible).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[3], ids[1], ids[0]],
        "newest first, contoso only"
    );
    let nothing = RunFilter { visible_workspaces: Some(vec![]), limit: 100, ..Default::default() };
    assert!(e.svc.list(&nothing).await.unwrap().is_empty());
    let cancelled = RunFilter { outcome: Some(RunOutcome::Cancelled), limit: 100, ..Default::default() };
    assert_eq!(e.svc.list(&cancelled).await.unwrap().len(), 1);
    let page1 = e.svc.list(&RunFilter { limit: 2, ..Default::default() }).await.unwrap();
    let page2 = e.svc.list(&RunFilter { limit: 2, before: Some(page1[1].id), ..Default::default() }).await.unwrap();
    let all: Vec<_> = page1.iter().chain(&page2).map(|r| r.id).collect();
    assert_eq!(all, vec![ids[3], ids[2], ids[1], ids[0]]);
}

pub(crate) async fn counts_group_by_workspace_status_and_outcome_within_the_filter(b: Backend) {
    let e = env(b).await;
    let mut ids = vec![];
    for (ws, env_id) in [("contoso", "e1"), ("contoso", "e2"), ("contoso", "e3"), ("fabrikam", "f1")] {
        let req = DispatchRequest {
            scope: Scope { workspace_id: ws.into(), environment_id: Some(env_id.into()), ..Scope::default() },
            ..sync_req(env_id)
        };
        ids.push(e.svc.dispatch(req).await.unwrap().run.id);
    }
    for &id in &ids[..2] {
        e.svc.claim(id, "w1").await.unwrap();
        let from = oprun_shared::BlockFrom::Lease(lease(&e, id, "w1").await);
        e.svc.block(id, from, oprun_shared::ReasonCode::ExecutionCapabilityMissing, "revoked").await.unwrap();
    }
    let count = |filter: RunFilter| {
        let svc = e.svc.clone();
        async move {
            svc.count(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|c| (c.workspace_id, c.status.as_str().to_string(), c.outcome.as_str().to_string(), c.count))
                .collect::<Vec<_>>()
        }
    };
    let all = count(RunFilter::default()).await;
    let row =
        |ws: &str, status: &str, outcome: &str, n: u64| (ws.to_string(), status.to_string(), outcome.to_string(), n);
    assert_eq!(
        all,
        vec![
            row("contoso", "completed", "blocked", 2),
            row("contoso", "queued", "pending", 1),
            row("fabrikam", "queued", "pending", 1)
        ]
    );
    // Visibility holds, and a page's limit and cursor do not narrow a count.
    let contoso = RunFilter {
        visible_workspaces: Some(vec!["contoso".into()]),
        limit: 1,
        before: Some(ids[1]),
        ..Default::default()
    };
    assert_eq!(
        count(contoso).await,
        vec![row("contoso", "completed", "blocked", 2), row("contoso", "queued", "pending", 1)]
    );
    assert!(count(RunFilter { visible_workspaces: Some(vec![]), ..Default::default() }).await.is_empty());
    // Only runs no run retries: a retried run leaves the count.
    e.svc.retry(ids[0], &oncall()).await.unwrap();
    let not_retried = RunFilter { outcome: Some(RunOutcome::Blocked), without_retry: true, ..Default::default() };
    assert_eq!(count(not_retried.clone()).await, vec![row("contoso", "completed", "blocked", 1)]);
    let listed = e.svc.list(&RunFilter { limit: 100, ..not_retried }).await.unwrap();
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ids[1]]);
}
