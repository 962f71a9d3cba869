//! Fault injection on the production stack (Postgres runs + Redis queue),
//! issue 7: a SIGKILL campaign against the `oprun worker` binary with a local
//! provider, a Redis restarted without persistence, and a Postgres restarted
//! under a running worker. Each test uses its own servers or namespaces where
//! it breaks something: the shared test Redis and Postgres are never
//! restarted (other tests use them at the same time).

#[path = "../common/mod.rs"]
mod common;

mod campaign;
mod kills;
mod postgres_restart;

use oprun_scheduler::DispatchOutcome;
use oprun_shared::{DispatchRequest, Initiator, OperationRun, Scope, SourceSurface};
use serde_json::{Value, json};
use uuid::Uuid;

use common::Env;

/// A small seeded generator (PCG-style LCG), so a campaign's kill times
/// reproduce from the printed seed.
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Self {
        let mut g = Self(seed ^ 0x9e37_79b9_7f4a_7c15);
        g.next();
        g
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// `OPRUN_FAULTS_SEED` if set, else the clock.
fn seed() -> u64 {
    std::env::var("OPRUN_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
    })
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn request(op: &str, env: &str, target: Option<&str>, params: Value) -> DispatchRequest {
    DispatchRequest {
        available_at: None,
        operation: op.into(),
        scope: Scope {
            workspace_id: "contoso".into(),
            environment_id: Some(env.into()),
            target_type: target.map(|_| "collection".to_string()),
            target_id: target.map(str::to_string),
        },
        initiator: Initiator::user("ops-user-1"),
        source: SourceSurface::Cli,
        context: json!({}),
        params,
    }
}

async fn dispatch(e: &Env, req: DispatchRequest) -> OperationRun {
    match e.dispatcher.dispatch(req).await.unwrap() {
        DispatchOutcome::Dispatched { run, deduplicated: false, push_failed: false } => *run,
        other => panic!("{other:?}"),
    }
}

async fn runs(e: &Env, ids: &[Uuid]) -> Vec<OperationRun> {
    let found = e.db.store.get_runs(ids).await.expect("read the runs");
    assert_eq!(found.len(), ids.len(), "every run is still there");
    found
}

/// `(action, actor)` of every audit row of a run, oldest first.
async fn audit_trail(e: &Env, id: Uuid) -> Vec<(String, String)> {
    let mut rows = e.service.audit(id).await.expect("read the audit trail");
    rows.sort_by_key(|a| a.id);
    rows.into_iter().map(|a| (a.entry.action, a.entry.actor.id)).collect()
}

fn count_action(trail: &[(String, String)], action: &str) -> usize {
    trail.iter().filter(|(a, _)| a == action).count()
}
