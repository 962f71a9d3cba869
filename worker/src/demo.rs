//! The built-in `demo` kind: a DEMO operation that walks a deterministic,
//! in-process paged collection — no network — with summary counts and a
//! checkpoint per page, like the real provider kinds. It exists so that
//! `oprun up` shows real runs on a machine with no servers and no provider.
//!
//! Parameters (all optional): `pages` (1–1000, default 5), `page_size`
//! (1–1000, default 20), `fail_every` (every n-th item fails, 0 = none,
//! default 0: with failures the run is partially_succeeded), `page_delay_ms`
//! (0–10000, default 200).

use std::time::Duration;

use async_trait::async_trait;
use oprun_shared::{Completion, OperationSpec, RunOutcome, SummaryCounts};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::operation::{Operation, OperationError, RunContext};

/// The kind name catalog entries use: `kind = "demo"`.
pub const KIND: &str = "demo";
/// The in-process provider demo operations name (`provider = "demo"`): it
/// needs no `[providers.demo]` section.
pub const PROVIDER: &str = "demo";

/// The demo collection walker.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoCollection;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    pages: u64,
    page_size: u64,
    fail_every: u64,
    page_delay_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self { pages: 5, page_size: 20, fail_every: 0, page_delay_ms: 200 }
    }
}

fn parse(params: &Value) -> Result<Params, String> {
    let Some(map) = params.as_object() else {
        return Err("demo params: must be a JSON object".into());
    };
    for (key, v) in map {
        if !["pages", "page_size", "fail_every", "page_delay_ms"].contains(&key.as_str()) {
            return Err(format!("demo params: unknown field '{key}'"));
        }
        if !v.is_u64() {
            return Err(format!("demo params: {key} must be a non-negative integer"));
        }
    }
    let p: Params = serde_json::from_value(params.clone()).map_err(|e| format!("demo params: {e}"))?;
    if !(1..=1000).contains(&p.pages) {
        return Err(format!("demo params: pages must be 1–1000, got {}", p.pages));
    }
    if !(1..=1000).contains(&p.page_size) {
        return Err(format!("demo params: page_size must be 1–1000, got {}", p.page_size));
    }
    if p.page_delay_ms > 10_000 {
        return Err(format!("demo params: page_delay_ms must be at most 10000, got {}", p.page_delay_ms));
    }
    Ok(p)
}

#[async_trait]
impl Operation for DemoCollection {
    fn validate(&self, params: &Value, _spec: &OperationSpec) -> Result<(), String> {
        parse(params).map(|_| ())
    }

    async fn execute(&self, ctx: &RunContext) -> Result<Completion, OperationError> {
        let p = parse(ctx.params()).map_err(OperationError::payload_invalid)?;
        let start = ctx.checkpoint().and_then(|c| c.get("next_page")).and_then(Value::as_u64).unwrap_or(0);
        let mut failed_total = ctx.run().summary_counts.get("failed");
        for page in start..p.pages {
            if ctx.cancel_requested() {
                return Ok(ctx.cancelled());
            }
            tokio::time::sleep(Duration::from_millis(p.page_delay_ms)).await;
            let first = page * p.page_size;
            let failed = if p.fail_every == 0 {
                0
            } else {
                (first + 1..=first + p.page_size).filter(|n| n % p.fail_every == 0).count() as u64
            };
            failed_total += failed;
            let mut counts = SummaryCounts::new();
            for (key, v) in [
                ("total", p.page_size),
                ("processed", p.page_size),
                ("succeeded", p.page_size - failed),
                ("failed", failed),
                ("pages", 1),
            ] {
                counts
                    .add(key, v)
                    .map_err(|e| OperationError::failed(oprun_shared::ReasonCode::UnknownError, e.to_string()))?;
            }
            ctx.progress(counts, Some(json!({ "next_page": page + 1 }))).await?;
        }
        if ctx.cancel_requested() {
            return Ok(ctx.cancelled());
        }
        let outcome = if failed_total > 0 { RunOutcome::PartiallySucceeded } else { RunOutcome::Succeeded };
        Ok(Completion { outcome, ..Completion::succeeded(SummaryCounts::new()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_checked_naming_the_field() {
        assert!(parse(&json!({})).is_ok());
        for (v, needle) in [
            (json!({"pages": 0}), "pages"),
            (json!({"page_size": 5000}), "page_size"),
            (json!({"page_delay_ms": 99999}), "page_delay_ms"),
            (json!({"pagez": 1}), "pagez"),
            (json!({"pages": "many"}), "pages"),
        ] {
            let e = parse(&v).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
