//! Access truth — actors, workspaces, managed environments, roles and
//! capabilities, memberships, provider connections — and the [`Authorizer`]
//! that checks a dispatch, and again every run at the moment it executes,
//! against it.
//!
//! - [`file`](self::file): the declarative access document and its validation;
//! - [`decision`](self::decision): facts, requests and the verdict they make;
//! - here: the [`AccessStore`] port and the [`Authorizer`] over it.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;

use crate::catalog::Catalog;
use crate::reason::ReasonCode;
use crate::run::{OperationRun, Scope};
use crate::store::StoreError;
use crate::viewer::Viewer;

mod decision;
mod file;

pub use decision::{AccessFacts, Decision, Request, evaluate};
pub use file::{
    AccessFile, AccessFileError, ActorEntry, ActorStatus, ActorType, ApplyReport, ConnectionEntry, ConnectionStatus,
    EnvironmentEntry, EnvironmentStatus, LOCAL_ADMIN, MembershipEntry, WorkspaceEntry, WorkspaceStatus,
    grantable_capabilities,
};

/// The access tables. Implemented by both stores.
#[async_trait]
pub trait AccessStore: Send + Sync + std::fmt::Debug {
    /// Make the access tables equal to `file`, in one transaction.
    async fn apply_access(&self, file: &AccessFile) -> Result<ApplyReport, StoreError>;

    /// Current truth for one authorization, in one query.
    async fn access_facts(&self, req: &Request<'_>) -> Result<AccessFacts, StoreError>;

    /// The capabilities `actor` holds now in `workspace` (none if the actor
    /// or the workspace is not active).
    async fn capabilities(&self, actor_id: &str, workspace_id: &str) -> Result<BTreeSet<String>, StoreError>;

    /// An actor's kind (`user` or `service`), if it exists.
    async fn actor_kind(&self, actor_id: &str) -> Result<Option<String>, StoreError>;

    /// The workspaces where `actor` holds `capability` now (active actor and
    /// workspaces only).
    async fn workspaces_with(&self, actor_id: &str, capability: &str) -> Result<Vec<String>, StoreError>;

    /// The active workspaces, by id.
    async fn active_workspaces(&self) -> Result<Vec<String>, StoreError>;

    /// The active environments of a workspace, by id.
    async fn operable_environments(&self, workspace_id: &str) -> Result<Vec<String>, StoreError>;
}

/// Checks dispatches and executions against current access truth.
#[derive(Debug, Clone)]
pub struct Authorizer {
    access: Arc<dyn AccessStore>,
    catalog: Arc<Catalog>,
}

impl Authorizer {
    /// An authorizer over `access` with the operations of `catalog`.
    pub fn new(access: Arc<dyn AccessStore>, catalog: Arc<Catalog>) -> Self {
        Self { access, catalog }
    }

    /// The access store.
    pub fn access(&self) -> &Arc<dyn AccessStore> {
        &self.access
    }

    async fn check(&self, actor_id: &str, operation: &str, scope: &Scope) -> Result<Decision, StoreError> {
        let Some(spec) = self.catalog.get(operation) else {
            return Ok(Decision::deny(
                ReasonCode::RunOperationUnknown,
                format!("operation '{operation}' is not in this deployment's catalog"),
            ));
        };
        let req = Request { actor_id, capability: &spec.capability, scope, provider: spec.provider.as_deref() };
        let facts = self.access.access_facts(&req).await?;
        Ok(evaluate(&req, &facts))
    }

    /// May `actor_id` start `operation` in `scope` now?
    pub async fn authorize_dispatch(
        &self,
        actor_id: &str,
        operation: &str,
        scope: &Scope,
    ) -> Result<Decision, StoreError> {
        self.check(actor_id, operation, scope).await
    }

    /// May this run execute now — its initiator, against current truth, not
    /// the dispatch snapshot?
    pub async fn reauthorize(&self, run: &OperationRun) -> Result<Decision, StoreError> {
        let scope = Scope {
            workspace_id: run.workspace_id.clone(),
            environment_id: run.environment_id.clone(),
            target_type: run.target_type.clone(),
            target_id: run.target_id.clone(),
        };
        self.check(&run.initiator.id, &run.operation, &scope).await
    }

    /// The viewer `actor_id` is for runs of `workspace_id`, now.
    pub async fn viewer(&self, actor_id: &str, workspace_id: &str) -> Result<Viewer, StoreError> {
        Ok(Viewer::new(actor_id, self.access.capabilities(actor_id, workspace_id).await?))
    }
}
