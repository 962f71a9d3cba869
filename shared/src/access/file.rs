//! The declarative access document: [`AccessFile`] (`oprun access apply
//! FILE`) and its validation. Applying it makes the access tables equal to
//! it in one transaction ([`AccessStore::apply_access`](super::AccessStore::apply_access)).
//! What the file no longer lists is *disabled*, not deleted, where runs and
//! audit rows may still name it (actors → `disabled`, workspaces →
//! `suspended`, environments → `offboarded`); roles, role capabilities,
//! memberships and provider connections carry no history and are replaced
//! outright.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::lifecycle::{ParseEnumError, text_enum};
use crate::run::MAX_ID_LEN;
use crate::viewer::BUILTIN_CAPABILITIES;

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

#[cfg(test)]
mod tests {
    use super::*;

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
