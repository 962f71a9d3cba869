//! Bearer tokens: how one is made and stored (hashed), how long it may
//! live, and which actor a request's token names.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use oprun_shared::Initiator;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::ApiState;
use super::error::{ApiError, ApiResult};

/// Token prefix (so that leaked tokens are recognisable by scanners).
pub const TOKEN_PREFIX: &str = "oprun_";

/// The SHA-256 of a token, hex: the only form a token is stored in.
pub fn hash_token(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

/// A new token: `oprun_<id>_<secret>`, its public id, and its hash.
pub fn new_token() -> (String, String, String) {
    let id = Uuid::new_v4().simple().to_string()[..12].to_string();
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let token = format!("{TOKEN_PREFIX}{id}_{secret}");
    let hash = hash_token(&token);
    (token, id, hash)
}

/// The caller behind the bearer token.
pub(super) async fn caller(state: &ApiState, headers: &HeaderMap) -> ApiResult<Initiator> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| t.starts_with(TOKEN_PREFIX))
        .ok_or_else(ApiError::unauthorized)?;
    actor_of_hash(state, &hash_token(token)).await?.ok_or_else(ApiError::unauthorized)
}

/// The actor of a live token, by the token's hash (`None`: unknown, revoked,
/// expired, or its actor disabled).
pub(super) async fn actor_of_hash(state: &ApiState, hash: &str) -> ApiResult<Option<Initiator>> {
    let Some(actor) = state.tokens.token_actor(hash, state.clock.now()).await.map_err(ApiError::unavailable)? else {
        return Ok(None);
    };
    let kind = state.access.actor_kind(&actor).await.map_err(ApiError::unavailable)?;
    Ok(Some(if kind.as_deref() == Some("service") { Initiator::service(actor) } else { Initiator::user(actor) }))
}

/// The longest token lifetime, `10y` (humantime's years of 365.25 days). A
/// token that should outlive it is one that is never rotated: make it without
/// `--expires-in` (until revoked) and say so.
pub const MAX_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10 * 31_557_600);

/// A token's expiry from a `--expires-in` duration; an error rather than a
/// wrapped or missing expiry when it cannot be represented.
pub fn expiry(now: DateTime<Utc>, expires_in: Option<std::time::Duration>) -> Result<Option<DateTime<Utc>>, String> {
    let Some(d) = expires_in else { return Ok(None) };
    let too_long = || format!("--expires-in: {} s is too far in the future", d.as_secs());
    let d = chrono::Duration::from_std(d).map_err(|_| too_long())?;
    now.checked_add_signed(d).map(Some).ok_or_else(too_long)
}
