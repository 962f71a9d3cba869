//! Limits: the provider and per-environment concurrency, the response body cap,
//! the failure message excerpt.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oprun_shared::RunOutcome;
use serde_json::json;

use super::fixture::{provider, provider_with, providers_at};
use super::{PAGE_1, dispatch, run_on, run_one};
use crate::common::{Env, Stack};

pub(crate) async fn the_provider_concurrency_limit_holds_under_fifty_runs(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 3).await;
    p.fix.pages.store(1, Ordering::SeqCst);
    p.fix.delay_ms.store(40, Ordering::SeqCst);
    let mut ids = vec![];
    for _ in 0..50 {
        ids.push(dispatch(&e, "test.collect", "contoso-prod", json!({})).await.id);
    }
    let worker = e.start_worker(e.http_runner("w1", &p.providers));
    for id in &ids {
        assert_eq!(e.until_completed(*id, 120).await.outcome, RunOutcome::Succeeded);
    }
    worker.stop().await;
    let peak = p.fix.peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "peak of {peak} concurrent requests exceeds the limit of 3");
    assert!(peak >= 2, "runs did overlap (peak {peak})");
}

/// A provider that answers 200 and then streams `{"value": [` and spaces
/// (64 KiB every 5 ms, for 30 s) without a Content-Length; counts requests.
async fn endless_body_server() -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let start = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nb\r\n{\"value\": [\r\n";
                if sock.write_all(start.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
                let until = tokio::time::Instant::now() + Duration::from_secs(30);
                while tokio::time::Instant::now() < until {
                    if sock.write_all(chunk.as_bytes()).await.is_err() {
                        return; // the client stopped reading
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
    });
    (base, hits)
}

/// A body is read in pieces up to the provider's `max_response_bytes`: an
/// endless one ends the run `provider.bad_response` once the cap is passed
/// (not at the request timeout, not after buffering it all), and a
/// Content-Length over the cap is refused before the body is read.
pub(crate) async fn an_oversized_response_body_is_a_bad_response(stack: Stack) {
    // The default cap, against a body that never ends.
    let e = Env::new(stack).await;
    let (base, hits) = endless_body_server().await;
    let (providers, _dir) = providers_at(&base, 0, 4, "");
    let done = run_on(&e, &providers, "test.collect", json!({})).await;
    assert_eq!(
        (done.outcome, done.reason_code.as_deref()),
        (RunOutcome::Failed, Some("provider.bad_response")),
        "{done:?}"
    );
    let message = &done.failure_summary[0].message;
    assert!(message.contains("max_response_bytes") && message.contains("8388608"), "{message}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "an oversized body is not retried");
    // A configured cap, and a Content-Length that announces more.
    let e = Env::new(stack).await;
    let p = provider_with(3, 4, "", "max_response_bytes = 4096").await;
    let big = json!({ "value": (0..1000).map(|i| json!({ "id": i })).collect::<Vec<_>>() }).to_string();
    assert!(big.len() > 4096);
    p.script("/coll/contoso-prod?page=1", vec![(200, vec![], big)]);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(
        (done.outcome, done.reason_code.as_deref()),
        (RunOutcome::Failed, Some("provider.bad_response")),
        "{done:?}"
    );
    let message = &done.failure_summary[0].message;
    assert!(message.contains("Content-Length") && message.contains("max_response_bytes (4096"), "{message}");
    assert_eq!(p.hits("/coll/contoso-prod?page=1"), 1);
    // Under the cap, a page is read as before.
    let e = Env::new(stack).await;
    let p = provider_with(3, 4, "", "max_response_bytes = 4096").await;
    assert_eq!(run_one(&e, &p, "test.collect").await.outcome, RunOutcome::Succeeded);
}

/// `concurrency_per_environment = 2` under a provider limit of 8: one worker
/// with 16 slots and 24 runs in two environments never has more than 2
/// requests in flight for one environment, while the two environments run
/// side by side (the limit is per environment, not a smaller global one).
pub(crate) async fn concurrency_per_environment_caps_each_environment_within_a_worker(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider_with(3, 8, "", "concurrency_per_environment = 2").await;
    p.fix.pages.store(1, Ordering::SeqCst);
    p.fix.delay_ms.store(100, Ordering::SeqCst);
    let mut ids = vec![];
    for _ in 0..12 {
        for env in ["contoso-prod", "contoso-dev"] {
            ids.push(dispatch(&e, "test.collect", env, json!({})).await.id);
        }
    }
    let worker = e.start_worker_with(e.http_runner("w1", &p.providers), 16);
    for id in &ids {
        assert_eq!(e.until_completed(*id, 120).await.outcome, RunOutcome::Succeeded);
    }
    worker.stop().await;
    let by_env = p.fix.env_inflight.lock().unwrap().clone();
    for env in ["contoso-prod", "contoso-dev"] {
        let peak = by_env.get(env).map(|(_, peak)| *peak);
        assert_eq!(peak, Some(2), "{env}: most requests at once (the limit is 2): {by_env:?}");
    }
    let peak = p.fix.peak.load(Ordering::SeqCst);
    assert!((3..=4).contains(&peak), "both environments were served at once: peak {peak}, {by_env:?}");
}

/// A failure message keeps at most a 200-character excerpt of the body (199
/// characters and an ellipsis), however long the body.
pub(crate) async fn a_failure_message_keeps_at_most_a_200_character_excerpt_of_the_body(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    let body: String = (0..100).map(|i| format!("part{i:03} ")).collect();
    assert_eq!(body.len(), 800);
    p.script(PAGE_1, vec![(400, vec![], body.clone())]);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(done.reason_code.as_deref(), Some("provider.bad_response"), "{done:?}");
    let message = &done.failure_summary[0].message;
    let (head, excerpt) = message.split_once(": ").unwrap_or_else(|| panic!("{message}"));
    assert_eq!(head, "provider 'graph' answered 400 Bad Request", "{message}");
    assert_eq!(excerpt.chars().count(), 200, "{message}");
    assert_eq!(excerpt.strip_suffix('…'), Some(&body[..199]), "{message}");
}
