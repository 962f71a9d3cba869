//! Dispatch inside the caller's own transaction: the run exists if and only
//! if the caller commits.

use oprun_shared::store::{Backend, SqlStore, TxDispatch};
use oprun_shared::testing;
use oprun_shared::{Authorizer, ReasonCode, RunStatus};

use super::{Env, actions, env, sync_req};

/// Dispatch `req` in a transaction of `e`'s store, then commit or roll it
/// back; what the dispatch said.
async fn dispatch_then(e: &Env, auth: &Authorizer, req: oprun_shared::DispatchRequest, commit: bool) -> TxDispatch {
    match &e.db.database.sqlite {
        Some(pool) => in_tx(pool.begin().await.unwrap(), e, auth, req, commit).await,
        None => {
            let pool = sqlx::PgPool::connect(&e.db.url).await.unwrap();
            in_tx(pool.begin().await.unwrap(), e, auth, req, commit).await
        }
    }
}

/// Dispatch `req` in the caller's transaction `tx`, then end it.
async fn in_tx<B: Backend>(
    mut tx: sqlx::Transaction<'static, B>,
    e: &Env,
    auth: &Authorizer,
    req: oprun_shared::DispatchRequest,
    commit: bool,
) -> TxDispatch {
    let out = SqlStore::<B>::dispatch_in(&e.svc, auth, &mut tx, req).await.unwrap();
    if commit {
        tx.commit().await.unwrap()
    } else {
        tx.rollback().await.unwrap()
    }
    out
}

fn written(d: TxDispatch) -> oprun_shared::Dispatched {
    match d {
        TxDispatch::Dispatched(d) => *d,
        other => panic!("expected a dispatch, got {other:?}"),
    }
}

pub(crate) async fn a_dispatch_in_the_callers_transaction_exists_only_if_it_commits(b: testing::Backend) {
    let e = env(b).await;
    e.db.access.apply_access(&testing::access_file()).await.unwrap();
    let auth = Authorizer::new(e.db.access.clone(), testing::catalog());
    // Rolled back: no run, no audit row.
    let gone = written(dispatch_then(&e, &auth, sync_req("contoso-prod"), false).await);
    assert!(!gone.deduplicated);
    assert!(e.svc.get(gone.run.id).await.is_err(), "a rolled-back dispatch leaves no run");
    assert!(actions(&e, gone.run.id).await.is_empty(), "and no audit row");
    // Committed: queued, audited, claimable.
    let kept = written(dispatch_then(&e, &auth, sync_req("contoso-prod"), true).await);
    let run = e.svc.get(kept.run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(actions(&e, run.id).await, vec!["run.dispatch"]);
    let mut cursor = None;
    let claimed = e.svc.claim_ready("w1", 10, &mut cursor).await.unwrap();
    assert_eq!(claimed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![run.id]);
    // The same scope again while that run is active: deduplicated, nothing new.
    let again = written(dispatch_then(&e, &auth, sync_req("contoso-prod"), true).await);
    assert_eq!((again.deduplicated, again.run.id), (true, run.id));
    // An actor without the right is told so; nothing is written.
    let mut req = sync_req("contoso-dev");
    req.initiator = oprun_shared::Initiator::user("viewer-1");
    match dispatch_then(&e, &auth, req, true).await {
        TxDispatch::Denied { reason, .. } => assert_ne!(reason, ReasonCode::UnknownError),
        other => panic!("expected a denial, got {other:?}"),
    }
    let listed = e.svc.list(&oprun_shared::RunFilter { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(listed.len(), 1, "only the committed run exists");
}
