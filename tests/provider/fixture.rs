//! The provider stand-in: a local axum server with scripted answers, paging
//! (next links in every style), counters of hits and requests in flight, and
//! the `graph` provider configured on it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use oprun::config::Config;
use oprun_worker::http::Providers;
use serde_json::{Value, json};

use crate::common;

/// Carries `common::SECRET_MARK`, like every provider token of the suite.
pub(crate) const TOKEN: &str = "tok-oprun-canary-3f9a1c77e2d84b6fa0c5d2e1b9a4f6c8";

/// A scripted answer: status, headers, body (`$TOKEN` is replaced).
pub(crate) type Answer = (u16, Vec<(&'static str, String)>, String);

#[derive(Default)]
pub(crate) struct Fix {
    /// Scripted answers by request path (FIFO), before the default behaviour.
    pub(crate) script: Mutex<HashMap<String, VecDeque<Answer>>>,
    pub(crate) hits: Mutex<HashMap<String, usize>>,
    pub(crate) inflight: AtomicUsize,
    pub(crate) peak: AtomicUsize,
    pub(crate) pages: AtomicUsize,
    pub(crate) fail_every: AtomicUsize,
    pub(crate) delay_ms: AtomicUsize,
    pub(crate) link_header: AtomicUsize,
    /// How the next link is written: [`NEXT_ABSOLUTE`] (default) and the others.
    pub(crate) next_style: AtomicUsize,
    /// Every request the server saw, `METHOD path?query`, in order.
    pub(crate) seen: Mutex<Vec<String>>,
    /// When each collection request arrived, with its environment and the
    /// status it was answered (in order of arrival).
    pub(crate) arrivals: Mutex<Vec<(std::time::Instant, String)>>,
    /// A delay for the first hit of a key only (ms).
    pub(crate) stall_once: Mutex<HashMap<String, u64>>,
    pub(crate) base: Mutex<String>,
    /// The JSON bodies `POST /call/…` received, in order.
    pub(crate) call_bodies: Mutex<Vec<Value>>,
    /// Requests in flight and the most seen at once, by environment (the
    /// path's `{env}` segment).
    pub(crate) env_inflight: Mutex<HashMap<String, (usize, usize)>>,
}

/// The next link is an absolute URL on the server's origin.
const NEXT_ABSOLUTE: usize = 0;

/// The next link is an absolute-path reference (`/v1.0/coll/x?page=2`).
pub(crate) const NEXT_ABSOLUTE_PATH: usize = 1;

/// The next link is signed: the provider token, a SAS `sig` and an AWS
/// signature ride in its query, beside a paging cursor.
pub(crate) const NEXT_SIGNED: usize = 2;

/// The next link points to another origin (`localhost` instead of `127.0.0.1`).
pub(crate) const NEXT_OTHER_ORIGIN: usize = 3;

/// The SAS signature and AWS signature a signed next link carries.
pub(crate) const SIG: &str = "sv-sas-signature-value-3Fq9";

pub(crate) const AMZ_SIG: &str = "aws-signature-value-7c1e";

#[derive(serde::Deserialize)]
struct PageQuery {
    pub(crate) page: Option<usize>,
}

async fn collection(State(fix): State<Arc<Fix>>, Query(q): Query<PageQuery>, uri: Uri, headers: HeaderMap) -> Response {
    fix.seen.lock().unwrap().push(format!("GET {}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("")));
    let page = q.page.unwrap_or(1);
    let path = uri.path().to_string();
    let key = format!("{path}?page={page}");
    *fix.hits.lock().unwrap().entry(key.clone()).or_default() += 1;
    let now = fix.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    fix.peak.fetch_max(now, Ordering::SeqCst);
    let env = path.rsplit('/').next().unwrap_or_default().to_string();
    fix.arrivals.lock().unwrap().push((std::time::Instant::now(), env.clone()));
    {
        let mut by_env = fix.env_inflight.lock().unwrap();
        let (current, peak) = by_env.entry(env.clone()).or_default();
        *current += 1;
        *peak = (*peak).max(*current);
    }
    let stall = fix.stall_once.lock().unwrap().remove(&key).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(fix.delay_ms.load(Ordering::SeqCst) as u64 + stall)).await;
    fix.inflight.fetch_sub(1, Ordering::SeqCst);
    fix.env_inflight.lock().unwrap().get_mut(&env).expect("counted above").0 -= 1;
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return (StatusCode::UNAUTHORIZED, "no token").into_response();
    }
    let scripted = fix.script.lock().unwrap().get_mut(&key).and_then(VecDeque::pop_front);
    if let Some((status, hdrs, body)) = scripted {
        let mut resp = (StatusCode::from_u16(status).unwrap(), body.replace("$TOKEN", TOKEN)).into_response();
        for (k, v) in hdrs {
            resp.headers_mut().insert(k, v.parse().unwrap());
        }
        return resp;
    }
    let size = 5;
    let fail_every = fix.fail_every.load(Ordering::SeqCst);
    let items: Vec<Value> = (0..size)
        .map(|i| {
            let n = (page - 1) * size + i + 1;
            if fail_every > 0 && n % fail_every == 0 {
                json!({"id": n, "error": {"code": "itemFailed"}})
            } else {
                json!({"id": n})
            }
        })
        .collect();
    let pages = fix.pages.load(Ordering::SeqCst);
    let base = fix.base.lock().unwrap().clone();
    let n = page + 1;
    let next = (page < pages).then(|| match fix.next_style.load(Ordering::SeqCst) {
        NEXT_ABSOLUTE_PATH => format!("{path}?page={n}"),
        NEXT_SIGNED => format!(
            "{base}{path}?page={n}&access_token={TOKEN}&sig={SIG}&X-Amz-Signature={AMZ_SIG}&$skiptoken=cursor-{n}"
        ),
        NEXT_OTHER_ORIGIN => format!("{}{path}?page={n}", base.replace("127.0.0.1", "localhost")),
        NEXT_ABSOLUTE => format!("{base}{path}?page={n}"),
        other => panic!("unknown next style {other}"),
    });
    if fix.link_header.load(Ordering::SeqCst) == 1 {
        let mut resp = axum::Json(json!({ "value": items })).into_response();
        if let Some(n) = next {
            resp.headers_mut().insert("link", format!("<{n}>; rel=\"next\"").parse().unwrap());
        }
        return resp;
    }
    axum::Json(json!({ "value": items, "@odata.nextLink": next })).into_response()
}

/// Any other request: recorded, 404.
async fn elsewhere(State(fix): State<Arc<Fix>>, method: axum::http::Method, uri: Uri) -> Response {
    fix.seen.lock().unwrap().push(format!("{method} {}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("")));
    (StatusCode::NOT_FOUND, "no such route").into_response()
}

pub(crate) async fn call(State(fix): State<Arc<Fix>>, Path(env): Path<String>, uri: Uri, body: String) -> Response {
    fix.seen.lock().unwrap().push(format!("POST {}", uri.path()));
    *fix.hits.lock().unwrap().entry(format!("/call/{env}")).or_default() += 1;
    let key = format!("/call/{env}");
    fix.call_bodies.lock().unwrap().push(serde_json::from_str(&body).unwrap_or(Value::Null));
    if let Some((status, _, b)) = fix.script.lock().unwrap().get_mut(&key).and_then(VecDeque::pop_front) {
        return (StatusCode::from_u16(status).unwrap(), b).into_response();
    }
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    axum::Json(json!({ "received": v })).into_response()
}

pub(crate) struct Provider {
    pub(crate) fix: Arc<Fix>,
    pub(crate) providers: Providers,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) async fn provider(retry_budget: u32, concurrency: usize) -> Provider {
    provider_with(retry_budget, concurrency, "", "").await
}

/// The fixture with the provider's `base_url` at `base_path` under the
/// server, and `extra` lines in its `[providers.graph]` table.
pub(crate) async fn provider_with(retry_budget: u32, concurrency: usize, base_path: &str, extra: &str) -> Provider {
    let fix = Arc::new(Fix::default());
    fix.pages.store(3, Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/coll/{env}", axum::routing::get(collection))
        .route("/v1.0/coll/{env}", axum::routing::get(collection))
        .route("/call/{env}", axum::routing::post(call))
        .fallback(elsewhere)
        .with_state(fix.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *fix.base.lock().unwrap() = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (providers, dir) = providers_at(&format!("{base}{base_path}"), retry_budget, concurrency, extra);
    Provider { fix, providers, _dir: dir }
}

/// As [`provider`], its budgets on `clock` (a test on a manual clock: a
/// provider's block ends when that clock passes it).
pub(crate) async fn provider_on(
    retry_budget: u32,
    concurrency: usize,
    clock: std::sync::Arc<dyn oprun_shared::Clock>,
) -> Provider {
    let mut p = provider(retry_budget, concurrency).await;
    let base = p.fix.base.lock().unwrap().clone();
    let budgets = oprun_worker::budget::Budgets::in_process_on(clock);
    (p.providers, p._dir) = providers_with(&base, retry_budget, concurrency, "", &budgets);
    p
}

/// The `graph` provider at `base_url`, its token in a file of the returned directory.
pub(crate) fn providers_at(
    base_url: &str,
    retry_budget: u32,
    concurrency: usize,
    extra: &str,
) -> (Providers, tempfile::TempDir) {
    providers_with(base_url, retry_budget, concurrency, extra, &oprun_worker::budget::Budgets::in_process())
}

fn providers_with(
    base_url: &str,
    retry_budget: u32,
    concurrency: usize,
    extra: &str,
    budgets: &oprun_worker::budget::Budgets,
) -> (Providers, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("graph.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // `extra` may set its own request_timeout.
    let timeout = if extra.contains("request_timeout") { "" } else { "request_timeout = \"5s\"\n" };
    let config_toml = format!(
        "[providers.graph]\nbase_url = \"{base_url}\"\ntoken_file = \"{}\"\nretry_budget = {retry_budget}\n\
         retry_after_cap = \"5s\"\nconcurrency = {concurrency}\n{timeout}{extra}\n",
        token_file.display()
    );
    let config = Config::from_toml(&format!("{}\n{config_toml}", common::CATALOG), "provider test").unwrap();
    (Providers::from_config(&config.providers, config.dir(), budgets).unwrap(), dir)
}

impl Provider {
    pub(crate) fn script(&self, key: &str, answers: Vec<Answer>) {
        self.fix.script.lock().unwrap().insert(key.into(), answers.into());
    }

    pub(crate) fn hits(&self, key: &str) -> usize {
        self.fix.hits.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    pub(crate) fn seen(&self) -> Vec<String> {
        self.fix.seen.lock().unwrap().clone()
    }
}
