//! HTTP providers and the built-in `http.collect` and `http.call` kinds.
//!
//! One reqwest client (rustls) per provider, reused; a bearer token read from
//! an environment variable or a file (never from the config itself); a
//! concurrency limit per provider and process, and a budget per provider and
//! environment (`crate::budget`: concurrency, rate and the provider's own
//! Retry-After blocks, shared by every worker through Redis), held per
//! request and released while waiting to retry. Transient failures (429 with
//! Retry-After, 502/503/504, timeouts, connection errors) are retried with
//! exponential backoff and jitter (backon) inside the attempt, up to the
//! retry budget; permanent ones are classified into `provider.*` codes. Every
//! message is sanitized (and stripped of the provider's own token) before it
//! is stored or logged; raw bodies are never stored.
//!
//! What a provider sends is bounded and kept in its place: a body is read a
//! chunk at a time up to `max_response_bytes`; a scope id cannot change a
//! request path (placeholders are percent-encoded and a segment they would
//! make `.` or `..` is refused); a next link is resolved as a URL reference
//! against the page that carried it and must stay on the base's origin; and
//! it is checkpointed without the provider token and secret- or
//! signature-named query parameters (`links.rs`, `storable_link`).
//!
//! Files: `provider.rs` (one provider: setup, limits, a request with its
//! retries, failure classification), `links.rs` (request paths from scope
//! placeholders, next links and what of them a checkpoint keeps),
//! `collect.rs` and `call.rs` (the two kinds).

mod call;
mod collect;
mod links;
mod provider;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use oprun_shared::OperationSpec;

pub use self::call::HttpCall;
pub use self::collect::HttpCollect;
pub use self::provider::{Provider, ProviderSetupError};
use crate::budget::Budgets;
use crate::config::ProviderConfig;
use crate::operation::Operations;

/// The kind that walks a paged collection.
pub const COLLECT: &str = "http.collect";
/// The kind that makes one request.
pub const CALL: &str = "http.call";
/// The longest error-body excerpt kept in a failure summary.
pub const EXCERPT_CHARS: usize = 200;

/// The providers of a config, by name.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<Provider>>,
}

impl Providers {
    /// Build every provider of the `[providers]` section: read tokens (a
    /// relative `token_file` is in `base_dir`, the config file's folder),
    /// build clients; their requests take room in `budgets`.
    pub fn from_config(
        providers: &BTreeMap<String, ProviderConfig>,
        base_dir: Option<&Path>,
        budgets: &Budgets,
    ) -> Result<Self, ProviderSetupError> {
        let mut by_name = BTreeMap::new();
        for (name, cfg) in providers {
            by_name.insert(name.clone(), Arc::new(Provider::new(name, cfg, base_dir, budgets)?));
        }
        Ok(Self { by_name })
    }

    /// One provider.
    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    /// Register the HTTP kinds into `ops`.
    pub fn register(&self, ops: &mut Operations) {
        ops.register(COLLECT, HttpCollect::new(self.clone()));
        ops.register(CALL, HttpCall::new(self.clone()));
    }
}

/// A string setting of the operation's `settings` table.
fn setting<'a>(spec: &'a OperationSpec, key: &str) -> Option<&'a str> {
    spec.settings.get(key).and_then(|v| v.as_str())
}

/// The provider the operation names, configured in this worker.
fn provider_of<'a>(providers: &'a Providers, spec: &OperationSpec) -> Result<&'a Arc<Provider>, String> {
    let name = spec.provider.as_deref().ok_or("the operation names no provider")?;
    providers.get(name).ok_or_else(|| format!("provider '{name}' is not configured in this worker"))
}
