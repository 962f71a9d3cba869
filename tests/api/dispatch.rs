//! `POST /v1/runs` and `POST /v1/runs/batch`: the caller's token is the
//! actor; every status the issue names; an idempotency key replays its run.

use super::*;

impl Api {
    /// POST with extra headers; the status and the JSON body.
    async fn post_with(&self, path: &str, token: &str, headers: &[(&str, &str)], body: &str) -> (StatusCode, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).bearer_auth(token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.header("content-type", "application/json").body(body.to_string()).send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("POST {path}: not JSON ({status}): {text}")))
    }
}

fn body(env: &str, extra: Value) -> String {
    let mut b = json!({ "operation": "test.count", "workspace": "contoso", "environment": env, "params": {} });
    if let (Some(o), Value::Object(x)) = (b.as_object_mut(), extra) {
        o.extend(x);
    }
    b.to_string()
}

pub(crate) async fn dispatch_over_http_answers_every_status(stack: Stack) {
    let a = api(stack).await;
    let (ops, _) = a.token("ops-user-1", None).await;
    // 201: a new run, started by the caller, from the API.
    let (status, v) = a.call("POST", "/v1/runs", Some(&ops), Some(&body("contoso-prod", json!({})))).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["run"]["initiator"]["id"].as_str(), v["run"]["initiator"]["kind"].as_str()),
        (Some("ops-user-1"), Some("user"))
    );
    assert_eq!((v["run"]["source_surface"].as_str(), v["run"]["status"].as_str()), (Some("api"), Some("queued")));
    assert_eq!(v["deduplicated"], false);
    let first = v["run"]["id"].clone();
    // 200: the scope already has an active run.
    let (status, v) = a.call("POST", "/v1/runs", Some(&ops), Some(&body("contoso-prod", json!({})))).await;
    assert_eq!((status, &v["deduplicated"], &v["run"]["id"]), (StatusCode::OK, &json!(true), &first), "{v}");

    // Idempotency-Key: the same key returns the same run, even after it
    // ended (without the key, a new run would be made).
    let key = [("Idempotency-Key", "order-7f3a")];
    let (status, v) = a.post_with("/v1/runs", &ops, &key, &body("contoso-dev", json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let keyed: uuid::Uuid = v["run"]["id"].as_str().unwrap().parse().unwrap();
    a.e.dispatcher.service().cancel(keyed, &Initiator::user("ops-user-1")).await.unwrap();
    let (status, v) = a.post_with("/v1/runs", &ops, &key, &body("contoso-dev", json!({}))).await;
    assert_eq!((status, &v["replayed"]), (StatusCode::OK, &json!(true)), "{v}");
    assert_eq!(v["run"]["id"], keyed.to_string());
    assert_eq!(v["run"]["outcome"], "cancelled", "the first request's run, as it is now");
    // Another caller's same key is its own.
    let (cap, _) = a.token("cap-user", None).await;
    let (status, v) = a.post_with("/v1/runs", &cap, &key, &body("contoso-dev", json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_ne!(v["run"]["id"], keyed.to_string());

    // 403: refused with the execution.* reason, its translation, and an audit row.
    let (viewer, _) = a.token("viewer-1", None).await;
    let (status, v) = a.call("POST", "/v1/runs", Some(&viewer), Some(&body("contoso-moving", json!({})))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(error_code(&v), "dispatch_refused");
    assert_eq!(v["error"]["reason_code"], "execution.capability_missing", "{v}");
    assert!(v["error"]["reason"]["label"].is_string() && v["error"]["reason"]["explanation"].is_string(), "{v}");
    let refusals = rows(&a.e, "SELECT action FROM audit_events WHERE actor_id = 'viewer-1'").await;
    assert!(refusals.iter().any(|r| r == "run.dispatch_refused"), "{refusals:?}");
    // A suspended environment: refused for its own reason.
    let (status, v) = a.call("POST", "/v1/runs", Some(&ops), Some(&body("contoso-lab", json!({})))).await;
    assert_eq!(
        (status, v["error"]["reason_code"].as_str()),
        (StatusCode::FORBIDDEN, Some("execution.environment_not_operable")),
        "{v}"
    );

    // 404: a workspace the caller cannot see (fab-user is fabrikam's).
    let (fab, _) = a.token("fab-user", None).await;
    let (status, v) = a.call("POST", "/v1/runs", Some(&fab), Some(&body("contoso-prod", json!({})))).await;
    assert_eq!((status, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{v}");

    // 422: bad input names the field; nothing is written.
    let before = rows(&a.e, "SELECT CAST(COUNT(*) AS TEXT) FROM operation_runs").await;
    for (b, field) in [
        (body("contoso-prod", json!({"operation": "no.such"})), "operation"),
        (body("contoso-prod", json!({"params": [1]})), "params"),
        (body("contoso-prod", json!({"available_at": "soon"})), "available_at"),
        (body("contoso-prod", json!({"available_at": "2999-01-01T00:00:00Z"})), "available_at"),
        (body("contoso-prod", json!({"workspace": ""})), "workspace"),
        (body("contoso-prod", json!({"colour": "red"})), "colour"),
        ("[1, 2]".to_string(), "request body"),
    ] {
        let (status, v) = a.call("POST", "/v1/runs", Some(&ops), Some(&b)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{b}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(field), "{b} names {field}: {v}");
    }
    let long = "k".repeat(300);
    let (status, v) =
        a.post_with("/v1/runs", &ops, &[("Idempotency-Key", long.as_str())], &body("contoso-revoked", json!({}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("Idempotency-Key"), "{v}");
    assert_eq!(rows(&a.e, "SELECT CAST(COUNT(*) AS TEXT) FROM operation_runs").await, before, "nothing written");
    // No token: 401.
    let (status, _) = a.call("POST", "/v1/runs", None, Some(&body("contoso-prod", json!({})))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // available_at: delayed, listed as waiting.
    let at = (SystemClock.now() + chrono::Duration::hours(1)).to_rfc3339();
    let (status, v) =
        a.call("POST", "/v1/runs", Some(&ops), Some(&body("contoso-revoked", json!({"available_at": at})))).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (_, waiting) = a.call("GET", "/v1/runs?waiting=true", Some(&ops), None).await;
    assert!(waiting["runs"].as_array().unwrap().iter().any(|r| r["id"] == v["run"]["id"]), "{waiting}");
}

pub(crate) async fn a_batch_dispatches_a_thousand_runs_in_one_request(stack: Stack) {
    let a = api(stack).await;
    let (ops, _) = a.token("ops-user-1", None).await;
    let item = |i: usize| {
        json!({ "operation": "test.count", "workspace": "contoso", "environment": "contoso-prod",
                "target_type": "device", "target_id": format!("d{i}"), "params": {} })
    };
    let runs: Vec<Value> = (0..1000).map(item).collect();
    let payload = json!({ "runs": runs }).to_string();
    assert!(payload.len() > api::MAX_BODY_BYTES, "the batch is bigger than an ordinary body ({} bytes)", payload.len());
    let (status, v) = a.call("POST", "/v1/runs/batch", Some(&ops), Some(&payload)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    assert!(
        results.iter().all(|r| r["status"] == 201 && r["run"]["initiator"]["id"] == "ops-user-1"),
        "{:?}",
        &results[..2]
    );
    let count = rows(&a.e, "SELECT CAST(COUNT(*) AS TEXT) FROM operation_runs WHERE actor_id = 'ops-user-1'").await;
    assert_eq!(count, vec!["1000".to_string()]);

    // Mixed: a new run, a deduplicated one, a refused one, one in a workspace
    // the caller cannot see — each answered in its place.
    let mixed = json!({ "runs": [
        item(1000),
        item(0),
        { "operation": "test.count", "workspace": "contoso", "environment": "contoso-lab", "params": {} },
        { "operation": "test.count", "workspace": "fabrikam", "environment": "fabrikam-prod", "params": {} },
    ] });
    let (status, v) = a.call("POST", "/v1/runs/batch", Some(&ops), Some(&mixed.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let st: Vec<i64> = v["results"].as_array().unwrap().iter().map(|r| r["status"].as_i64().unwrap()).collect();
    assert_eq!(st, vec![201, 200, 403, 404], "{v}");
    assert_eq!(v["results"][2]["error"]["reason_code"], "execution.environment_not_operable");

    // One bad item, or too many: 422 naming it, nothing written.
    let before = rows(&a.e, "SELECT CAST(COUNT(*) AS TEXT) FROM operation_runs").await;
    let bad = json!({ "runs": [item(2000), { "operation": "test.count", "workspace": "contoso", "params": "x" }] });
    let (status, v) = a.call("POST", "/v1/runs/batch", Some(&ops), Some(&bad.to_string())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("runs[1].params"), "{v}");
    let too_many = json!({ "runs": (0..1001).map(|i| item(3000 + i)).collect::<Vec<_>>() });
    let (status, v) = a.call("POST", "/v1/runs/batch", Some(&ops), Some(&too_many.to_string())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (status, _) = a.call("POST", "/v1/runs/batch", Some(&ops), Some(r#"{"runs": []}"#)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(rows(&a.e, "SELECT CAST(COUNT(*) AS TEXT) FROM operation_runs").await, before, "nothing written");
}
