//! Bad input: every malformed request is a JSON 4xx naming what is wrong.

use oprun_shared::RunStatus;
use reqwest::StatusCode;
use serde_json::json;

use super::{api, error_code};
use crate::common::Stack;

pub(crate) async fn bad_input_is_always_a_json_4xx(stack: Stack) {
    let a = api(stack).await;
    let run = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.count", json!({})).await;
    let (ops, _) = a.token("ops-user-1", None).await;
    let big = format!("{{\"dry_run\": true, \"operation\": \"{}\"}}", "x".repeat(api::MAX_BODY_BYTES + 10));
    let cases: Vec<(&str, String, Option<String>, StatusCode, &str)> = vec![
        ("GET", "/v1/runs/not-a-uuid".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/runs?status=sleeping".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/runs?limit=0".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/runs?limit=many".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/runs?colour=red".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/runs?before=123".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("POST", "/v1/reconcile".into(), Some("{not json".into()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        (
            "POST",
            "/v1/reconcile".into(),
            Some(r#"{"dry_run": "yes"}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/reconcile".into(),
            Some(r#"{"dry_run": true, "force": 1}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        ("POST", "/v1/reconcile".into(), Some(big), StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        (
            "POST",
            format!("/v1/runs/{}/retry", run.id),
            Some(r#"{"x": 1}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        ("POST", "/v1/runs/%00/cancel".into(), Some("{}".into()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/nothing-here".into(), None, StatusCode::NOT_FOUND, "not_found"),
        // A path segment that is not UTF-8 once percent-decoded.
        ("GET", "/v1/runs/%FF".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/runs/%C3%28/audit".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("POST", "/v1/runs/%FF/retry".into(), Some("{}".into()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        (
            "POST",
            "/v1/runs/abc%FE%FF/cancel".into(),
            Some("{}".into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
    ];
    for (m, p, b, want, code) in cases {
        let (status, v) = a.call(m, &p, Some(&ops), b.as_deref()).await;
        assert_eq!(status, want, "{m} {p}: {v}");
        assert!(!error_code(&v).is_empty());
        assert_eq!(error_code(&v), code, "{m} {p}: {v}");
        assert!(
            !v["error"]["message"].as_str().unwrap_or_default().is_empty(),
            "{m} {p}: a message says what is wrong: {v}"
        );
    }
    assert_eq!(a.e.service.get(run.id).await.unwrap().status, RunStatus::Queued, "nothing changed");
}
