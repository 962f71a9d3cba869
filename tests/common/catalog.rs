//! The catalog and the access truth every end-to-end test runs on.

use std::sync::Arc;

use oprun_shared::{AccessFile, Catalog};

/// The catalog the end-to-end tests use: `test.count` (environment scope,
/// provider graph) runs [`Counting`]; `test.slow` walks the demo collection.
pub const CATALOG: &str = r#"
capabilities = ["inventory.sync", "report.build"]

[operations."test.count"]
kind = "count"
capability = "inventory.sync"
scope = "environment"
provider = "graph"
lease = "20s"
heartbeat = "2s"
max_attempts = 3

[operations."test.fanout"]
kind = "count"
capability = "inventory.sync"
scope = "environment"
provider = "graph"
dedup = "none"

[operations."test.collect"]
kind = "http.collect"
provider = "graph"
capability = "inventory.sync"
scope = "environment"
dedup = "none"
lease = "20s"
heartbeat = "1s"
max_attempts = 3
settings = { path = "/coll/{environment}" }
# The in-attempt budget's own tests: a failure ends the run at once, and
# only a lost lease is retried (resumed from the checkpoint).
retry = { on = ["run.lease_expired"] }

# tests/provider/over_time.rs: retries over time (no in-attempt budget there).
[operations."test.retrying"]
kind = "http.collect"
provider = "graph"
capability = "inventory.sync"
scope = "environment"
dedup = "one_per_scope"
lease = "20s"
heartbeat = "1s"
max_attempts = 4
settings = { path = "/coll/{environment}" }
retry = { backoff = "15s", backoff_cap = "1h", jitter = false }

# A handler that snoozes (tests/provider/over_time.rs).
[operations."test.snoozer"]
kind = "snoozer"
capability = "inventory.sync"
scope = "environment"
dedup = "none"
retry = { max_snoozes = 3 }

[operations."test.call"]
kind = "http.call"
provider = "graph"
capability = "inventory.sync"
scope = "environment"
dedup = "none"
settings = { path = "/call/{environment}", method = "POST" }
retry = { on = [] }

[operations."test.slow"]
kind = "demo"
capability = "inventory.sync"
scope = "environment"
lease = "3s"
heartbeat = "1s"
max_attempts = 3
resumable = true

[operations."test.report"]
kind = "count"
capability = "report.build"
scope = "workspace"
dedup = "none"

[operations."test.collect_campaign"]
kind = "http.collect"
provider = "graph"
capability = "inventory.sync"
scope = "environment"
dedup = "none"
lease = "20s"
heartbeat = "1s"
max_attempts = 50
resumable = true
settings = { path = "/campaign/{environment}/{target_id}", items = "value" }

# tests/load.rs: one provider call per run, and a scheduled one per tick.
[operations."load.call"]
kind = "http.call"
provider = "graph"
capability = "inventory.sync"
scope = "environment"
dedup = "none"
max_attempts = 3
settings = { path = "/load/{target_id}", method = "POST" }

[operations."load.tick"]
kind = "http.call"
provider = "graph"
capability = "inventory.sync"
scope = "environment"
dedup = "none"
settings = { path = "/tick/{environment}", method = "POST" }
"#;

/// Access truth for the end-to-end tests: one actor and one environment per
/// reauthorization case, so that a single edit breaks each run differently.
pub const ACCESS: &str = r#"
[roles]
operator = ["inventory.sync", "report.build", "runs.view", "runs.retry", "runs.cancel", "runs.reconcile", "schedules.manage", "audit.view"]
automation = ["inventory.sync", "report.build"]
viewer = ["runs.view"]

[[actors]]
id = "ops-user-1"
kind = "user"
[[actors]]
id = "cap-user"
kind = "user"
[[actors]]
id = "gone-user"
kind = "user"
[[actors]]
id = "svc-scheduler"
kind = "service"
[[actors]]
id = "viewer-1"
kind = "user"
[[actors]]
id = "fab-user"
kind = "user"

[[workspaces]]
id = "contoso"
[[workspaces]]
id = "fabrikam"

[[environments]]
id = "contoso-prod"
workspace = "contoso"
[[environments]]
id = "contoso-dev"
workspace = "contoso"
[[environments]]
id = "contoso-moving"
workspace = "contoso"
[[environments]]
id = "contoso-revoked"
workspace = "contoso"
[[environments]]
id = "contoso-lab"
workspace = "contoso"
status = "suspended"
[[environments]]
id = "fabrikam-prod"
workspace = "fabrikam"

[[memberships]]
actor = "ops-user-1"
workspace = "contoso"
role = "operator"
[[memberships]]
actor = "cap-user"
workspace = "contoso"
role = "operator"
[[memberships]]
actor = "gone-user"
workspace = "contoso"
role = "operator"
[[memberships]]
actor = "svc-scheduler"
workspace = "contoso"
role = "automation"
[[memberships]]
actor = "svc-scheduler"
workspace = "fabrikam"
role = "automation"
[[memberships]]
actor = "viewer-1"
workspace = "contoso"
role = "viewer"
[[memberships]]
actor = "fab-user"
workspace = "fabrikam"
role = "operator"

[[provider_connections]]
environment = "contoso-prod"
provider = "graph"
[[provider_connections]]
environment = "contoso-dev"
provider = "graph"
[[provider_connections]]
environment = "contoso-moving"
provider = "graph"
[[provider_connections]]
environment = "contoso-revoked"
provider = "graph"
[[provider_connections]]
environment = "contoso-lab"
provider = "graph"
[[provider_connections]]
environment = "fabrikam-prod"
provider = "graph"
"#;

pub fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::from_toml(CATALOG).expect("test catalog"))
}

pub fn access(text: &str) -> AccessFile {
    let caps = oprun_shared::access::grantable_capabilities(&catalog());
    AccessFile::from_toml(text, "test access", Some(&caps)).expect("test access file")
}

/// The handler kinds the `oprun` binary knows (the built-in and the HTTP
/// kinds; the tests' own kinds exist only in the test processes).
pub const BINARY_KINDS: [&str; 3] = ["demo", "http.call", "http.collect"];

/// [`CATALOG`] as an `oprun` binary may run it: the operations of the kinds
/// it knows (it checks at start that it has a handler for every one; the
/// others' runs it leaves to the test's in-process workers).
pub fn binary_catalog() -> String {
    let mut table: toml::Table = toml::from_str(CATALOG).expect("the test catalog is TOML");
    if let Some(toml::Value::Table(ops)) = table.get_mut("operations") {
        ops.retain(|_, op| op.get("kind").and_then(toml::Value::as_str).is_some_and(|k| BINARY_KINDS.contains(&k)));
    }
    toml::to_string(&table).expect("the binary catalog")
}
