//! An unreachable store: every endpoint a JSON 503, `/readyz` saying so.

use std::sync::Arc;

use oprun_scheduler::Operator;
use oprun_shared::{JobQueue, SystemClock};
use reqwest::StatusCode;
use serde_json::json;

use super::{Api, api, error_code, serve, state};
use crate::common::{Env, Stack};

/// Make the env's store unreachable: the Postgres database is dropped (its
/// connections terminated); the SQLite store's pool is closed.
async fn lose_the_store(e: &Env) {
    lose(&e.db).await;
}

/// Make `db` unreachable (see [`lose_the_store`]).
async fn lose(db: &oprun_shared::testing::TestStore) {
    match &db.database.sqlite {
        None => {
            use sqlx::Connection;
            let admin = oprun_shared::testing::require_env(oprun_shared::testing::POSTGRES_URL_VAR);
            let name = db.url.rsplit('/').next().unwrap().to_string();
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{name}\" WITH (FORCE)")))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        Some(pool) => pool.close().await,
    }
}

/// The store goes away under a serving API: every authenticated endpoint
/// is a JSON 503 `unavailable` that names no cause, and `/readyz` is 503
/// saying the store is down (and with it the queue, which is the store).
pub(crate) async fn an_unreachable_store_is_a_503_and_readyz_says_so(stack: Stack) {
    let a = api(stack).await;
    let run = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.count", json!({})).await;
    let (ops, _) = a.token("ops-user-1", None).await;
    assert_eq!(a.call("GET", "/v1/runs", Some(&ops), None).await.0, StatusCode::OK);
    assert_eq!(a.call("GET", "/readyz", None, None).await.0, StatusCode::OK);
    lose_the_store(&a.e).await;
    let id = run.id;
    for (m, p, b) in [
        ("GET", "/v1/runs".to_string(), None),
        ("GET", format!("/v1/runs/{id}"), None),
        ("GET", format!("/v1/runs/{id}/audit"), None),
        ("POST", format!("/v1/runs/{id}/retry"), Some("{}")),
        ("POST", format!("/v1/runs/{id}/cancel"), Some("{}")),
        ("POST", "/v1/reconcile".to_string(), Some("{}")),
        ("GET", "/v1/schedules".to_string(), None),
        ("GET", "/metrics".to_string(), None),
    ] {
        let (status, v) = a.call(m, &p, Some(&ops), b).await;
        assert_eq!((status, error_code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{m} {p}: {v}");
        assert_eq!(v["error"]["message"], "the run store is unavailable; try again", "{m} {p}: no cause shown");
    }
    let (status, ready) = a.call("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["store"], false, "{ready}");
    assert_eq!(ready["queue"], false, "the queue is the store: {ready}");
    assert_eq!(a.call("GET", "/healthz", None, None).await.0, StatusCode::OK, "the process itself is alive");
}

/// Only the run store fails while the token still checks out (a query
/// failing mid-request): the operator actions' store errors are the same
/// JSON 503, and `/readyz` names the store (the queue still answers).
pub(crate) async fn a_run_store_failing_behind_a_valid_token_is_a_503(stack: Stack) {
    let a = api(stack).await;
    let (ops, _) = a.token("ops-user-1", None).await;
    let dead = oprun_shared::testing::TestStore::new(match stack {
        Stack::PostgresRedis => oprun_shared::testing::Backend::Postgres,
        Stack::Sqlite => oprun_shared::testing::Backend::Sqlite,
    })
    .await;
    lose(&dead).await;
    let service = Env::service_with(dead.store.clone(), Arc::new(SystemClock));
    let operator = Operator::new(oprun_scheduler::Dispatcher::new(
        service,
        a.e.authorizer.clone(),
        a.e.queue.clone() as Arc<dyn JobQueue>,
    ));
    let base = serve(state(&a.e, operator, vec![], None)).await;
    let b = Api { base, http: a.http.clone(), e: a.e };
    let id = uuid::Uuid::now_v7();
    for (m, p, body) in [
        ("GET", "/v1/runs".to_string(), None),
        ("GET", format!("/v1/runs/{id}"), None),
        ("GET", format!("/v1/runs/{id}/audit"), None),
        ("POST", format!("/v1/runs/{id}/retry"), Some("{}")),
        ("POST", format!("/v1/runs/{id}/cancel"), Some("{}")),
        ("POST", "/v1/reconcile".to_string(), Some("{}")),
        ("POST", "/v1/reconcile".to_string(), Some(r#"{"dry_run": true}"#)),
    ] {
        let (status, v) = b.call(m, &p, Some(&ops), body).await;
        assert_eq!((status, error_code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{m} {p}: {v}");
        assert_eq!(v["error"]["message"], "the run store is unavailable; try again", "{m} {p}: no cause shown");
    }
    let (status, ready) = b.call("GET", "/readyz", None, None).await;
    assert_eq!((status, ready), (StatusCode::SERVICE_UNAVAILABLE, json!({"store": false, "queue": true})));
}
