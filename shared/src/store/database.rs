//! The composition of the stores for one database URL: every port (runs,
//! access, tokens, ticks) over one backend's pool. The ports themselves
//! (`store/mod.rs`, `access`, `tokens`, `ticks`) name no driver.

use super::{PgRunStore, RunStore, SqliteRunStore, StoreError};

/// Both views of one database: runs (through the service) and access truth
/// plus tick records; and, for the embedded default, its SQLite pool.
#[derive(Debug, Clone)]
pub struct Database {
    /// The run store.
    pub runs: std::sync::Arc<dyn RunStore>,
    /// The access tables.
    pub access: std::sync::Arc<dyn crate::access::AccessStore>,
    /// The API tokens.
    pub tokens: std::sync::Arc<dyn crate::tokens::TokenStore>,
    /// The schedule ticks.
    pub ticks: std::sync::Arc<dyn crate::ticks::TickStore>,
    /// The SQLite pool, when the database is SQLite (for tools that read
    /// the file itself).
    pub sqlite: Option<sqlx::SqlitePool>,
}

impl Database {
    /// Every view of one Postgres database (`url`: `postgres://…`).
    pub async fn postgres(url: &str, max_connections: u32) -> Result<Database, StoreError> {
        let s = std::sync::Arc::new(PgRunStore::connect(url, max_connections).await?);
        Ok(Database { runs: s.clone(), access: s.clone(), tokens: s.clone(), ticks: s, sqlite: None })
    }

    /// Every view of one SQLite file (`url`: `sqlite://PATH` or
    /// `sqlite:PATH`), and its pool.
    pub async fn sqlite(url: &str, max_connections: u32) -> Result<Database, StoreError> {
        let s = std::sync::Arc::new(SqliteRunStore::connect(url, max_connections).await?);
        let sqlite = Some(s.pool().clone());
        Ok(Database { runs: s.clone(), access: s.clone(), tokens: s.clone(), ticks: s, sqlite })
    }
}
