//! The authorization verdict: current facts about one (actor, workspace,
//! environment, provider) and the [`Decision`] they make, in a fixed order.

use std::fmt;

use serde::Serialize;

use super::file::{ActorStatus, ConnectionStatus, EnvironmentStatus, WorkspaceStatus};
use crate::reason::ReasonCode;
use crate::run::Scope;

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
    pub(crate) fn deny(reason: ReasonCode, message: String) -> Self {
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
}
