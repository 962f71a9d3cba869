//! API tokens: only a token's hash is stored, with the actor it acts as, its
//! expiry and its revocation ([`TokenStore`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::store::StoreError;

/// The API tokens. Implemented by both stores.
#[async_trait]
pub trait TokenStore: Send + Sync + std::fmt::Debug {
    /// Store a new API token's hash for `actor_id`.
    async fn create_token(
        &self,
        id: &str,
        token_hash: &str,
        actor_id: &str,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError>;

    /// Revoke a token by id; false if there is no such live token.
    async fn revoke_token(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// The actor a token hash belongs to, if the token is live (not revoked,
    /// not expired) and its actor active.
    async fn token_actor(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<String>, StoreError>;
}
