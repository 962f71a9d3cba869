//! Access truth — actors, workspaces, managed environments, roles and
//! capabilities, memberships, provider connections — and the [`Authorizer`]
//! that checks a dispatch, and again every run at the moment it executes,
//! against it.
//!
//! The tables are fed declaratively: [`AccessFile`] (`oprun access apply
//! FILE`) makes them equal to a TOML document in one transaction. What the
//! file no longer lists is *disabled*, not deleted, where runs and audit rows
//! may still name it (actors → `disabled`, workspaces → `suspended`,
//! environments → `offboarded`); roles, role capabilities, memberships and
//! provider connections carry no history and are replaced outright.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::lifecycle::{ParseEnumError, text_enum};
use crate::reason::ReasonCode;
use crate::run::{OperationRun, Scope};
use crate::service::MAX_ID_LEN;
use crate::store::StoreError;
use crate::viewer::{BUILTIN_CAPABILITIES, Viewer};

text_enum! {
    /// What kind of actor an access-file actor is.
    ActorType, "actor kind" {
        /// A person.
        User => "user",
        /// A machine identity (a schedule's actor, an integration).
        Service => "service",
    }
}

text_enum! {
    /// Whether an actor may act.
    ActorStatus, "actor status" {
        /// May act.
        Active => "active",
        /// May not act; its runs are blocked when they execute.
        Disabled => "disabled",
    }
}

text_enum! {
    /// Whether a workspace may run operations.
    WorkspaceStatus, "workspace status" {
        /// Runs execute.
        Active => "active",
        /// Runs are blocked with `execution.workspace_inactive`.
        Suspended => "suspended",
    }
}

text_enum! {
    /// Whether a managed environment may be operated on.
    EnvironmentStatus, "environment status" {
        /// Operable.
        Active => "active",
        /// Temporarily not operable.
        Suspended => "suspended",
        /// Removed from management (also what an environment the access file
        /// no longer lists becomes).
        Offboarded => "offboarded",
    }
}

text_enum! {
    /// Whether a provider connection can be used.
    ConnectionStatus, "connection status" {
        /// Usable.
        Connected => "connected",
        /// The customer withdrew consent.
        ConsentRevoked => "consent_revoked",
        /// The stored credentials no longer work.
        CredentialsInvalid => "credentials_invalid",
    }
}

fn default_active_actor() -> ActorStatus {
    ActorStatus::Active
}
fn default_active_workspace() -> WorkspaceStatus {
    WorkspaceStatus::Active
}
fn default_active_environment() -> EnvironmentStatus {
    EnvironmentStatus::Active
}
fn default_connected() -> ConnectionStatus {
    ConnectionStatus::Connected
}

/// An actor entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorEntry {
    /// Unique id.
    pub id: String,
    /// `user` or `service`.
    pub kind: ActorType,
    /// A readable name.
    #[serde(default)]
    pub display_name: String,
    /// `active` (default) or `disabled`.
    #[serde(default = "default_active_actor")]
    pub status: ActorStatus,
}

/// A workspace entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceEntry {
    /// Unique id.
    pub id: String,
    /// A readable name (defaults to the id).
    #[serde(default)]
    pub name: String,
    /// `active` (default) or `suspended`.
    #[serde(default = "default_active_workspace")]
    pub status: WorkspaceStatus,
}

/// A managed environment entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentEntry {
    /// Unique id.
    pub id: String,
    /// The workspace it belongs to.
    pub workspace: String,
    /// A readable name (defaults to the id).
    #[serde(default)]
    pub name: String,
    /// `active` (default), `suspended` or `offboarded`.
    #[serde(default = "default_active_environment")]
    pub status: EnvironmentStatus,
}

/// A membership entry: an actor holds a role in a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipEntry {
    /// The actor.
    pub actor: String,
    /// The workspace.
    pub workspace: String,
    /// The role.
    pub role: String,
}

/// A provider connection entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionEntry {
    /// Unique id (defaults to `ENVIRONMENT:PROVIDER`).
    #[serde(default)]
    pub id: Option<String>,
    /// The environment it connects.
    pub environment: String,
    /// The provider's name (as in the config's `[providers]`).
    pub provider: String,
    /// `connected` (default), `consent_revoked` or `credentials_invalid`.
    #[serde(default = "default_connected")]
    pub status: ConnectionStatus,
}

impl ConnectionEntry {
    /// The connection's id.
    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(|| format!("{}:{}", self.environment, self.provider))
    }
}

/// The declarative access document `oprun access apply` loads.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    /// Role name → capabilities.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Actors.
    #[serde(default)]
    pub actors: Vec<ActorEntry>,
    /// Workspaces.
    #[serde(default)]
    pub workspaces: Vec<WorkspaceEntry>,
    /// Managed environments.
    #[serde(default)]
    pub environments: Vec<EnvironmentEntry>,
    /// Memberships.
    #[serde(default)]
    pub memberships: Vec<MembershipEntry>,
    /// Provider connections.
    #[serde(default)]
    pub provider_connections: Vec<ConnectionEntry>,
}

/// An access file that cannot be applied; the message names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct AccessFileError {
    /// The file.
    pub source_name: String,
    /// What is wrong, naming the entry.
    pub message: String,
}

/// The actor id the CLI acts and audits as when a command is run without
/// `--as` (`user:local-admin`): whoever can open the store file holds every
/// capability anyway. No access file may define an actor of this name, so an
/// audit row naming it was written by the CLI's local administrator alone
/// (and no API token can be made for it).
pub const LOCAL_ADMIN: &str = "local-admin";

fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err(format!("{what}: id must not be empty"));
    }
    if id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(format!("{what} '{}': ids are at most {MAX_ID_LEN} printable characters", id.escape_debug()));
    }
    Ok(())
}

impl AccessFile {
    /// Parse and validate. `capabilities` are the names roles may grant
    /// (oprun's own plus the catalog's); `None` skips that check.
    pub fn from_toml(
        text: &str,
        source_name: &str,
        capabilities: Option<&BTreeSet<String>>,
    ) -> Result<Self, AccessFileError> {
        let err = |message: String| AccessFileError { source_name: source_name.into(), message };
        let file: AccessFile = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        file.validate(capabilities).map_err(err)?;
        Ok(file)
    }

    /// Every reference resolves, every id is unique and sane.
    pub fn validate(&self, capabilities: Option<&BTreeSet<String>>) -> Result<(), String> {
        for (role, caps) in &self.roles {
            check_id("roles", role)?;
            for cap in caps {
                if let Some(known) = capabilities
                    && !known.contains(cap)
                {
                    return Err(format!("roles.{role}: unknown capability '{cap}'"));
                }
            }
        }
        let mut actors = BTreeSet::new();
        for (i, a) in self.actors.iter().enumerate() {
            check_id(&format!("actors[{i}]"), &a.id)?;
            if a.id == LOCAL_ADMIN {
                return Err(format!(
                    "actors[{i}]: '{LOCAL_ADMIN}' is reserved for the CLI's local administrator (commands run without --as)"
                ));
            }
            if !actors.insert(a.id.as_str()) {
                return Err(format!("actors[{i}]: actor '{}' is listed twice", a.id));
            }
        }
        let mut workspaces = BTreeSet::new();
        for (i, w) in self.workspaces.iter().enumerate() {
            check_id(&format!("workspaces[{i}]"), &w.id)?;
            if !workspaces.insert(w.id.as_str()) {
                return Err(format!("workspaces[{i}]: workspace '{}' is listed twice", w.id));
            }
        }
        let mut environments = BTreeSet::new();
        for (i, e) in self.environments.iter().enumerate() {
            check_id(&format!("environments[{i}]"), &e.id)?;
            if !environments.insert(e.id.as_str()) {
                return Err(format!("environments[{i}]: environment '{}' is listed twice", e.id));
            }
            if !workspaces.contains(e.workspace.as_str()) {
                return Err(format!("environments[{i}] '{}': unknown workspace '{}'", e.id, e.workspace));
            }
        }
        let mut memberships = BTreeSet::new();
        for (i, m) in self.memberships.iter().enumerate() {
            if !actors.contains(m.actor.as_str()) {
                return Err(format!("memberships[{i}]: unknown actor '{}'", m.actor));
            }
            if !workspaces.contains(m.workspace.as_str()) {
                return Err(format!("memberships[{i}]: unknown workspace '{}'", m.workspace));
            }
            if !self.roles.contains_key(&m.role) {
                return Err(format!("memberships[{i}]: unknown role '{}'", m.role));
            }
            if !memberships.insert((&m.actor, &m.workspace, &m.role)) {
                return Err(format!("memberships[{i}]: listed twice"));
            }
        }
        let mut connections = BTreeSet::new();
        let mut pairs = BTreeSet::new();
        for (i, c) in self.provider_connections.iter().enumerate() {
            check_id(&format!("provider_connections[{i}]"), &c.id())?;
            check_id(&format!("provider_connections[{i}].provider"), &c.provider)?;
            if !environments.contains(c.environment.as_str()) {
                return Err(format!("provider_connections[{i}]: unknown environment '{}'", c.environment));
            }
            if !connections.insert(c.id()) || !pairs.insert((&c.environment, &c.provider)) {
                return Err(format!(
                    "provider_connections[{i}]: a second connection for '{}' / '{}'",
                    c.environment, c.provider
                ));
            }
        }
        Ok(())
    }
}

/// The capabilities an access file's roles may grant under a catalog.
pub fn grantable_capabilities(catalog: &Catalog) -> BTreeSet<String> {
    let mut caps: BTreeSet<String> = BUILTIN_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    caps.extend(catalog.capabilities.iter().cloned());
    caps.extend(catalog.operations.values().map(|o| o.capability.clone()));
    caps
}

/// What applying an access file changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// Actors written from the file.
    pub actors: usize,
    /// Actors no longer listed, now disabled.
    pub actors_disabled: usize,
    /// Workspaces written.
    pub workspaces: usize,
    /// Workspaces no longer listed, now suspended.
    pub workspaces_suspended: usize,
    /// Environments written.
    pub environments: usize,
    /// Environments no longer listed, now offboarded.
    pub environments_offboarded: usize,
    /// Roles written (replacing all).
    pub roles: usize,
    /// Memberships written (replacing all).
    pub memberships: usize,
    /// Provider connections written (replacing all).
    pub provider_connections: usize,
}

/// Current truth about one (actor, workspace, environment, provider), read in
/// one query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessFacts {
    /// The actor's status, if it exists.
    pub actor_status: Option<String>,
    /// Whether the actor holds the capability in the workspace.
    pub has_capability: bool,
    /// The workspace's status, if it exists.
    pub workspace_status: Option<String>,
    /// The environment's workspace, if it exists.
    pub environment_workspace: Option<String>,
    /// The environment's status, if it exists.
    pub environment_status: Option<String>,
    /// The provider connection's status, if one exists.
    pub connection_status: Option<String>,
}

/// An authorization verdict: never a bare bool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Go ahead.
    Allowed,
    /// Refused, with the `execution.*` reason and a readable message (ids
    /// only, no secrets).
    Denied {
        /// The reason code.
        reason: ReasonCode,
        /// What is wrong.
        message: String,
    },
}

impl Decision {
    fn deny(reason: ReasonCode, message: String) -> Self {
        Decision::Denied { reason, message }
    }

    /// Whether it was allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed)
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allowed => f.write_str("allowed"),
            Decision::Denied { reason, message } => write!(f, "denied ({reason}): {message}"),
        }
    }
}

/// What is being authorized.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The actor.
    pub actor_id: &'a str,
    /// The capability the operation needs.
    pub capability: &'a str,
    /// The scope.
    pub scope: &'a Scope,
    /// The provider whose connection must be usable, if any.
    pub provider: Option<&'a str>,
}

/// The verdict on facts, in a fixed order: actor, workspace, capability,
/// environment, provider connection.
pub fn evaluate(req: &Request<'_>, facts: &AccessFacts) -> Decision {
    let actor = req.actor_id;
    let ws = &req.scope.workspace_id;
    match facts.actor_status.as_deref() {
        None => return Decision::deny(ReasonCode::ExecutionActorUnknown, format!("actor '{actor}' does not exist")),
        Some(s) if s != ActorStatus::Active.as_str() => {
            return Decision::deny(ReasonCode::ExecutionActorDisabled, format!("actor '{actor}' is {s}"));
        }
        Some(_) => {}
    }
    match facts.workspace_status.as_deref() {
        None => {
            return Decision::deny(ReasonCode::ExecutionWorkspaceInactive, format!("workspace '{ws}' does not exist"));
        }
        Some(s) if s != WorkspaceStatus::Active.as_str() => {
            return Decision::deny(ReasonCode::ExecutionWorkspaceInactive, format!("workspace '{ws}' is {s}"));
        }
        Some(_) => {}
    }
    if !facts.has_capability {
        return Decision::deny(
            ReasonCode::ExecutionCapabilityMissing,
            format!("actor '{actor}' does not hold '{}' in workspace '{ws}'", req.capability),
        );
    }
    if let Some(env) = &req.scope.environment_id {
        match (facts.environment_workspace.as_deref(), facts.environment_status.as_deref()) {
            (None, _) | (_, None) => {
                return Decision::deny(
                    ReasonCode::ExecutionEnvironmentNotOperable,
                    format!("environment '{env}' does not exist"),
                );
            }
            (Some(owner), _) if owner != ws => {
                return Decision::deny(
                    ReasonCode::ExecutionScopeChanged,
                    format!("environment '{env}' no longer belongs to workspace '{ws}'"),
                );
            }
            (_, Some(s)) if s != EnvironmentStatus::Active.as_str() => {
                return Decision::deny(
                    ReasonCode::ExecutionEnvironmentNotOperable,
                    format!("environment '{env}' is {s}"),
                );
            }
            _ => {}
        }
        if let Some(provider) = req.provider {
            match facts.connection_status.as_deref() {
                None => {
                    return Decision::deny(
                        ReasonCode::ExecutionProviderConnectionUnusable,
                        format!("environment '{env}' has no '{provider}' connection"),
                    );
                }
                Some(s) if s != ConnectionStatus::Connected.as_str() => {
                    return Decision::deny(
                        ReasonCode::ExecutionProviderConnectionUnusable,
                        format!("the '{provider}' connection of environment '{env}' is {s}"),
                    );
                }
                Some(_) => {}
            }
        }
    }
    Decision::Allowed
}

text_enum! {
    /// What became of one expected tick of a schedule.
    TickDecision, "tick decision" {
        /// A scheduler took the tick and is dispatching it (a tick left in
        /// this state means that scheduler died mid-dispatch).
        Claimed => "claimed",
        /// Runs were dispatched.
        Fired => "fired",
        /// An active run of the same operation and scope already existed.
        SkippedOverlap => "skipped_overlap",
        /// The tick was missed while no scheduler ran and the misfire policy
        /// skipped it.
        SkippedMisfire => "skipped_misfire",
        /// Dispatch-time authorization refused it (a blocked run records why).
        Refused => "refused",
    }
}

/// One tick's durable record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TickRecord {
    /// The schedule's name.
    pub schedule: String,
    /// The tick's time.
    pub scheduled_for: DateTime<Utc>,
    /// What was decided.
    pub decision: TickDecision,
    /// The runs it produced (dispatched, deduplicated or blocked).
    pub run_ids: Vec<Uuid>,
    /// Per-scope detail.
    pub details: serde_json::Value,
    /// The scheduler that decided.
    pub decided_by: String,
    /// When.
    pub decided_at: DateTime<Utc>,
}

/// The access tables and the tick record. Implemented by both stores.
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

    /// Take a tick: true for the one caller that inserted it.
    async fn claim_tick(
        &self,
        schedule: &str,
        scheduled_for: DateTime<Utc>,
        decision: TickDecision,
        decided_by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Record what a tick's holder has dispatched so far (the tick stays
    /// `claimed`; its claim time is renewed). False if `decided_by` no longer
    /// holds the tick (another scheduler re-drove it, or it was decided).
    async fn progress_tick(
        &self,
        schedule: &str,
        scheduled_for: DateTime<Utc>,
        decided_by: &str,
        run_ids: &[Uuid],
        details: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Take over the ticks of `schedule` that are still `claimed` but were
    /// abandoned: claimed (or last progressed) before `claimed_before`, or
    /// held by `decided_by` itself (whose earlier pass stopped mid-tick).
    /// Returns them, as recorded so far, oldest first, now held by
    /// `decided_by`.
    async fn reclaim_abandoned_ticks(
        &self,
        schedule: &str,
        claimed_before: DateTime<Utc>,
        decided_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<TickRecord>, StoreError>;

    /// Record what became of a claimed tick.
    async fn decide_tick(
        &self,
        schedule: &str,
        scheduled_for: DateTime<Utc>,
        decision: TickDecision,
        run_ids: &[Uuid],
        details: &serde_json::Value,
    ) -> Result<(), StoreError>;

    /// The newest recorded tick of a schedule.
    async fn last_tick(&self, schedule: &str) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// A schedule's ticks, newest first.
    async fn ticks(&self, schedule: &str, limit: u32) -> Result<Vec<TickRecord>, StoreError>;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(env: Option<&str>) -> Scope {
        Scope { workspace_id: "contoso".into(), environment_id: env.map(Into::into), ..Default::default() }
    }

    fn good() -> AccessFacts {
        AccessFacts {
            actor_status: Some("active".into()),
            has_capability: true,
            workspace_status: Some("active".into()),
            environment_workspace: Some("contoso".into()),
            environment_status: Some("active".into()),
            connection_status: Some("connected".into()),
        }
    }

    fn reason(d: Decision) -> Option<ReasonCode> {
        match d {
            Decision::Allowed => None,
            Decision::Denied { reason, .. } => Some(reason),
        }
    }

    #[test]
    fn each_fact_maps_to_its_execution_reason() {
        let s = scope(Some("prod"));
        let req = Request { actor_id: "a", capability: "inventory.sync", scope: &s, provider: Some("graph") };
        assert_eq!(reason(evaluate(&req, &good())), None);
        type Edit = fn(&mut AccessFacts);
        let cases: Vec<(Edit, ReasonCode)> = vec![
            (|f| f.actor_status = None, ReasonCode::ExecutionActorUnknown),
            (|f| f.actor_status = Some("disabled".into()), ReasonCode::ExecutionActorDisabled),
            (|f| f.workspace_status = Some("suspended".into()), ReasonCode::ExecutionWorkspaceInactive),
            (|f| f.workspace_status = None, ReasonCode::ExecutionWorkspaceInactive),
            (|f| f.has_capability = false, ReasonCode::ExecutionCapabilityMissing),
            (|f| f.environment_status = Some("suspended".into()), ReasonCode::ExecutionEnvironmentNotOperable),
            (
                |f| {
                    f.environment_status = None;
                    f.environment_workspace = None
                },
                ReasonCode::ExecutionEnvironmentNotOperable,
            ),
            (|f| f.environment_workspace = Some("fabrikam".into()), ReasonCode::ExecutionScopeChanged),
            (|f| f.connection_status = None, ReasonCode::ExecutionProviderConnectionUnusable),
            (|f| f.connection_status = Some("consent_revoked".into()), ReasonCode::ExecutionProviderConnectionUnusable),
        ];
        for (change, want) in cases {
            let mut f = good();
            change(&mut f);
            assert_eq!(reason(evaluate(&req, &f)), Some(want), "{f:?}");
        }
    }

    #[test]
    fn workspace_scope_and_no_provider_ignore_environment_and_connection_facts() {
        let s = scope(None);
        let req = Request { actor_id: "a", capability: "report.build", scope: &s, provider: None };
        let f = AccessFacts { environment_status: None, connection_status: None, ..good() };
        assert!(evaluate(&req, &f).is_allowed());
    }

    const FILE: &str = r#"
[roles]
operator = ["inventory.sync", "runs.view"]
[[actors]]
id = "ops-user-1"
kind = "user"
[[workspaces]]
id = "contoso"
[[environments]]
id = "contoso-prod"
workspace = "contoso"
[[memberships]]
actor = "ops-user-1"
workspace = "contoso"
role = "operator"
[[provider_connections]]
environment = "contoso-prod"
provider = "graph"
"#;

    #[test]
    fn a_good_file_parses_with_defaults() {
        let caps: BTreeSet<String> = ["inventory.sync", "runs.view"].iter().map(|s| s.to_string()).collect();
        let f = AccessFile::from_toml(FILE, "a.toml", Some(&caps)).unwrap();
        assert_eq!(f.actors[0].status, ActorStatus::Active);
        assert_eq!(f.environments[0].status, EnvironmentStatus::Active);
        assert_eq!(f.provider_connections[0].id(), "contoso-prod:graph");
    }

    #[test]
    fn bad_references_are_refused_naming_the_entry() {
        let cases = [
            (FILE.replace("role = \"operator\"", "role = \"admin\""), "memberships[0]: unknown role 'admin'"),
            (FILE.replace("actor = \"ops-user-1\"", "actor = \"ghost\""), "memberships[0]: unknown actor 'ghost'"),
            (
                FILE.replace("workspace = \"contoso\"\n[[memberships]]", "workspace = \"nope\"\n[[memberships]]"),
                "environments[0] 'contoso-prod': unknown workspace 'nope'",
            ),
            (FILE.replace("environment = \"contoso-prod\"", "environment = \"x\""), "unknown environment 'x'"),
            (FILE.replace("\"runs.view\"]", "\"runs.veiw\"]"), "roles.operator: unknown capability 'runs.veiw'"),
            (FILE.replace("kind = \"user\"", "kind = \"robot\""), "robot"),
            (FILE.replace("[[workspaces]]", "[[workspace]]"), "workspace"),
            (format!("{FILE}\n[[actors]]\nid = \"ops-user-1\"\nkind = \"user\"\n"), "listed twice"),
        ];
        let caps: BTreeSet<String> = ["inventory.sync", "runs.view"].iter().map(|s| s.to_string()).collect();
        for (text, needle) in cases {
            let e = AccessFile::from_toml(&text, "a.toml", Some(&caps)).unwrap_err();
            assert!(e.to_string().contains(needle) && e.to_string().starts_with("a.toml"), "want '{needle}': {e}");
        }
    }
}
