//! `http.collect`: walk a paged collection, page by page, with counts and
//! a checkpoint per page.

use async_trait::async_trait;
use oprun_shared::{Completion, FailureEntry, OperationSpec, ReasonCode, RunOutcome, SummaryCounts};
use reqwest::Method;
use serde_json::{Value, json};
use tracing::info;

use super::links::{fill, next_link, storable_link};
use super::{Providers, provider_of, setting};
use crate::operation::{Operation, OperationError, RunContext};

/// `e` with `note` added to its message.
fn with_note(e: OperationError, note: &str) -> OperationError {
    match e {
        OperationError::Failed { reason, message } => {
            OperationError::Failed { reason, message: format!("{message} ({note})") }
        }
        OperationError::Blocked { reason, message } => {
            OperationError::Blocked { reason, message: format!("{message} ({note})") }
        }
        other => other,
    }
}

/// `http.collect`: GET a paged collection.
///
/// Settings: `path` (with scope placeholders, required), `items` (the array
/// field, default `value`), `item_failed` (a field whose truthy value marks
/// an item failed, default `error`), `max_pages` (default 10000).
#[derive(Debug, Clone)]
pub struct HttpCollect {
    providers: Providers,
}

impl HttpCollect {
    /// The kind over these providers.
    pub fn new(providers: Providers) -> Self {
        Self { providers }
    }
}

#[async_trait]
impl Operation for HttpCollect {
    fn validate(&self, _params: &Value, spec: &OperationSpec) -> Result<(), String> {
        provider_of(&self.providers, spec)?;
        setting(spec, "path").ok_or("settings.path is required for http.collect")?;
        Ok(())
    }

    async fn execute(&self, ctx: &RunContext) -> Result<Completion, OperationError> {
        let spec = ctx.spec();
        let provider = provider_of(&self.providers, spec).map_err(OperationError::payload_invalid)?;
        let items_field = setting(spec, "items").unwrap_or("value");
        let failed_field = setting(spec, "item_failed").unwrap_or("error");
        let max_pages = spec.settings.get("max_pages").and_then(|v| v.as_integer()).unwrap_or(10_000).max(1) as u64;
        let mut failed_total = ctx.run().summary_counts.get("failed");
        // A checkpoint `{"done": true}`: an earlier attempt fetched the last
        // page (its counts are in the run) and died before completing; this
        // attempt only completes. Else resume at the stored next link.
        let done = ctx.checkpoint().and_then(|c| c.get("done")).and_then(Value::as_bool) == Some(true);
        // The query parameters the stored link was kept without, named when
        // the resumed request fails.
        let mut left_out = String::new();
        let mut next = match ctx.checkpoint().and_then(|c| c.get("next")).and_then(Value::as_str) {
            _ if done => {
                info!(run.id = %ctx.run().id, "every page was fetched before: completing from the checkpoint");
                provider.base.clone()
            }
            Some(resume) => {
                info!(run.id = %ctx.run().id, "resuming the collection from its checkpoint");
                let names: Vec<&str> = ctx
                    .checkpoint()
                    .and_then(|c| c.get("removed_params"))
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                left_out = names.join(", ");
                // Stored absolute; an older relative one resolves against the base.
                provider.link_url(&provider.base, resume)?
            }
            None => provider.path_url(&fill(setting(spec, "path").unwrap_or_default(), ctx)?)?,
        };
        let mut pages = 0;
        if !done {
            loop {
                if ctx.cancel_requested() {
                    return Ok(ctx.cancelled());
                }
                let (headers, bytes) = match provider.send(ctx, Method::GET, &next, None).await {
                    Err(e) if pages == 0 && !left_out.is_empty() => {
                        let note =
                            format!("resumed from a next link stored without its secret query parameters ({left_out})");
                        return Err(with_note(e, &note));
                    }
                    sent => sent?,
                };
                let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    OperationError::failed(ReasonCode::ProviderBadResponse, format!("page is not JSON: {e}"))
                })?;
                let items = body.get(items_field).and_then(Value::as_array).ok_or_else(|| {
                    OperationError::failed(
                        ReasonCode::ProviderBadResponse,
                        format!("page has no '{items_field}' array"),
                    )
                })?;
                let failed = items
                    .iter()
                    .filter(|i| i.get(failed_field).is_some_and(|v| !v.is_null() && *v != Value::Bool(false)))
                    .count() as u64;
                failed_total += failed;
                let total = items.len() as u64;
                let mut counts = SummaryCounts::new();
                for (k, v) in [
                    ("total", total),
                    ("processed", total),
                    ("succeeded", total - failed),
                    ("failed", failed),
                    ("pages", 1),
                ] {
                    counts.add(k, v).map_err(|e| OperationError::failed(ReasonCode::UnknownError, e.to_string()))?;
                }
                pages += 1;
                let link = next_link(&body, &headers);
                match link {
                    Some(link) if pages < max_pages => {
                        // Resolved and origin-checked now, so a bad link fails before it is stored.
                        let url = provider.link_url(&next, &link)?;
                        let (stored, removed) = storable_link(&url, &provider.token.0);
                        let mut checkpoint = json!({ "next": stored });
                        if !removed.is_empty() {
                            checkpoint["removed_params"] = json!(removed);
                        }
                        ctx.progress(counts, Some(checkpoint)).await?;
                        // This attempt follows the link as sent.
                        next = url;
                    }
                    _ => {
                        ctx.progress(counts, Some(json!({ "next": null, "done": true }))).await?;
                        break;
                    }
                }
            }
        }
        let outcome = if failed_total > 0 { RunOutcome::PartiallySucceeded } else { RunOutcome::Succeeded };
        let mut done = Completion { outcome, ..Completion::succeeded(SummaryCounts::new()) };
        if failed_total > 0 {
            done.failures.push(FailureEntry {
                reason_code: ReasonCode::ProviderItemFailed.as_str().into(),
                message: format!("{failed_total} item(s) were marked failed by provider '{}'", provider.name),
            });
        }
        Ok(done)
    }
}
