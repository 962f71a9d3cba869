//! `http.call`: one request.

use async_trait::async_trait;
use oprun_shared::{Completion, OperationSpec, SummaryCounts};
use reqwest::Method;
use serde_json::Value;

use super::links::fill;
use super::{Providers, provider_of, setting};
use crate::operation::{Operation, OperationError, RunContext};

/// `http.call`: one request. Settings: `method` (default POST), `path` (with
/// scope placeholders, required). The JSON body is the run's params.
#[derive(Debug, Clone)]
pub struct HttpCall {
    providers: Providers,
}

impl HttpCall {
    /// The kind over these providers.
    pub fn new(providers: Providers) -> Self {
        Self { providers }
    }
}

#[async_trait]
impl Operation for HttpCall {
    fn validate(&self, _params: &Value, spec: &OperationSpec) -> Result<(), String> {
        provider_of(&self.providers, spec)?;
        setting(spec, "path").ok_or("settings.path is required for http.call")?;
        let m = setting(spec, "method").unwrap_or("POST");
        Method::from_bytes(m.as_bytes()).map_err(|_| format!("settings.method: '{m}' is not an HTTP method"))?;
        Ok(())
    }

    async fn execute(&self, ctx: &RunContext) -> Result<Completion, OperationError> {
        let spec = ctx.spec();
        let provider = provider_of(&self.providers, spec).map_err(OperationError::payload_invalid)?;
        let method = Method::from_bytes(setting(spec, "method").unwrap_or("POST").as_bytes())
            .map_err(|_| OperationError::payload_invalid("settings.method is not an HTTP method"))?;
        let url = provider.path_url(&fill(setting(spec, "path").unwrap_or_default(), ctx)?)?;
        let body = (method != Method::GET && method != Method::HEAD).then(|| ctx.params().clone());
        provider.send(ctx, method, &url, body.as_ref()).await?;
        let counts = SummaryCounts::new().with("total", 1).and_then(|c| c.with("succeeded", 1)).unwrap_or_default();
        Ok(Completion::succeeded(counts))
    }
}
