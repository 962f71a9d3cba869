//! Reads: listing by visibility, status and outcome, paged by cursor.

use oprun_shared::testing::Backend;
use oprun_shared::{DispatchRequest, RunFilter, RunOutcome, Scope};

use super::{env, oncall, sync_req};

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
